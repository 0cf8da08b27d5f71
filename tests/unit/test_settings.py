import subprocess
import sys

import pytest

from emomon.services.settings import SettingsError, load_settings


def test_defaults_are_valid():
    s = load_settings(environ={})
    assert s.vad.frame_ms == 30 and s.worker.max_batch == 32 and s.mqtt.qos == 1


def test_stage_configs_are_the_one_source_of_defaults():
    """Each settings section turns into its stage's config whole, and a default is defined once:
    the sections' defaults are the configs' (and the values the product ran with before #19)."""
    from emomon.services.pipeline import streamer_config, transcriber_config
    from emomon.streamer.config import SegmenterConfig, SpeakerConfig, StreamerConfig

    s = load_settings(environ={}, overrides={"asr": {"encoder_window": "10+8"}})
    cfg = streamer_config(s)
    assert cfg == StreamerConfig(torch_threads=s.worker.torch_threads)
    assert cfg.vad == SegmenterConfig() and cfg.speakers == SpeakerConfig()
    assert transcriber_config(s) == type(transcriber_config(s))()
    assert (cfg.vad.aggressiveness, cfg.speakers.hop_s, cfg.speakers.change_window_s) == (
        3,
        0.25,
        0.6,
    )
    assert (cfg.speakers.change_confirm, cfg.speakers.similarity_threshold) == (2, 0.65)
    changed = load_settings(environ={}, overrides={"speakers": {"hop_s": 0.5, "num_speakers": 2}})
    assert streamer_config(changed).speakers == SpeakerConfig(hop_s=0.5, num_speakers=2)


def test_precedence_toml_env_cli(tmp_path):
    cfg = tmp_path / "emomon.toml"
    cfg.write_text("[vad]\naggressiveness = 1\nhangover_ms = 400\n[worker]\nmax_batch = 8\n")
    env = {"EMOMON_VAD__AGGRESSIVENESS": "2", "EMOMON_WORKER__MAX_WAIT_MS": "50"}
    s = load_settings(cfg, {"vad": {"aggressiveness": 3}}, environ=env)
    assert s.vad.aggressiveness == 3  # CLI beats env beats TOML
    assert s.vad.hangover_ms == 400  # TOML beats default
    assert s.worker.max_wait_ms == 50  # env beats default
    assert s.worker.max_batch == 8


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"EMOMON_VAD__AGGRESSIVENESS": "9"}, "vad.aggressiveness"),
        ({"EMOMON_VAD__FRAME_MS": "25"}, "vad.frame_ms"),
        ({"EMOMON_MQTT__URL": "http://x"}, "mqtt.url"),
        ({"EMOMON_ASR__ENCODER_WINDOW": "5s"}, "asr.encoder_window"),
        ({"EMOMON_WORKER__NOPE": "1"}, "worker.nope"),
    ],
)
def test_bad_value_names_the_field(env, field):
    with pytest.raises(SettingsError) as e:
        load_settings(environ=env)
    assert field in str(e.value)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[vad\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad, environ={})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def _emomon(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "emomon.services", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_config_show_and_bad_value_cli():
    r = _emomon("config", "show", "--set", "vad.aggressiveness=3")
    assert r.returncode == 0, r.stderr
    assert '"aggressiveness": 3' in r.stdout
    r = _emomon("config", "show", "--set", "vad.aggressiveness=7")
    assert r.returncode == 2
    assert (
        r.stderr.count("\n") == 1
        and "vad.aggressiveness" in r.stderr
        and "Traceback" not in r.stderr
    )
