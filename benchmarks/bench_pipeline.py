"""End-to-end latency of the embedded pipeline, per stage, on the shipped phone call.

Replays tests/data/phone-call-2spk.wav at real-time pace (like a live source), N copies in
parallel in one process (one session each), and prints end-of-speech -> event latency p50/p95
split by stage (VAD hang-over, speaker attribution, ASR, queue, fusion, sink), speaker-turn
agreement and WER against the call's reference (as the end-to-end test scores them), the turn
detector's cuts by resolution (frames / short / long windows), long-window cuts the frames
vetoed and updates whose short windows were shed under load (all sessions), the pauses the
end-of-turn model was asked about and the utterances it closed early, then the peak RSS of
a separate `emomon run` process. Latency runs from the moment the end of speech
was *played* (the real-time clock of the replay), so time spent in a backlog counts. Usage:

    .venv/bin/python benchmarks/bench_pipeline.py [--parallel 1 2 4 6] [--no-rss] [--per-utterance]
        [--end-of-turn settings|on|off|both] [--set S.F=V ...] [--dashboard] [--staggered]
        [--by-time S] [--synthetic RAVDESS_DIR [--conversations 24]] [--far-factor X]
        [--per-slot K] [--score-all] [--show-wer-above X] [--cpu-by-thread]

By default the N replays start at the same moment, so every session's utterances end at the same
instants and reach the ASR together: the worst case for bursts, and mostly the start of a call
(language detection, speaker clustering from nothing). ``--staggered`` spreads the starts as N
concurrent calls would be (see :func:`replays`); ``--by-time S`` prints where in the call the
tail latency comes from.

``--synthetic RAVDESS_DIR`` replays synthetic conversations instead of the call (a dev set the
load-related defaults may be chosen on; the call is the test): two RAVDESS actors take turns
through a telephone line, as in ``bench_turns.py``; session ``j`` replays conversation ``j``
(``--conversations`` of them, 24 by default, then again from the first), and agreement and WER
are scored against each conversation's own turns and sentences.

``--staggered --per-slot K --score-all`` scores every call of every slot; with ``--parallel 1
--synthetic`` that is K different conversations, each starting when the one before has been
played: the N = 1 figure over more than one conversation. ``--show-wer-above X`` prints the
transcripts of any session whose WER is above X (runaway transcripts); ``--cpu-by-thread`` each
run's CPU seconds by thread kind (:func:`thread_cpu`).

``--end-of-turn both`` runs each N without the end-of-turn model (``vad.end_of_turn_pause_ms=0``)
and with it (the settings' pause, or 150 ms where they turn it off), one after the other.
--dashboard serves the live dashboard from the same process (as `emomon run --dashboard`) and
keeps the page open in a headless Chromium for the whole run, so the p95 with and without it
can be compared (issue 17).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALL = ROOT / "tests" / "data" / "phone-call-2spk.wav"
STAGES = ("vad_hangover", "speaker", "asr", "queue", "fusion")
EOT_ON_PAUSE_MS = 150  # the best trade-off on the synthetic set (benchmarks/bench_end_of_turn.py)


def far_factor() -> float:
    from emomon.streamer.stages import LoadSignal

    return LoadSignal.FAR_FACTOR


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def overrides(sets: list[str]) -> dict:
    """``--set section.field=value`` (JSON values) as a nested override dict."""
    import json

    out: dict = {}
    for item in sets:
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


class OpenDashboard:
    """The dashboard served in-process, with its page open in a headless Chromium."""

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        import contextlib
        import shutil

        from emomon.services.dashboard.hub import DashboardHub
        from emomon.services.insights import Insights, InsightsSink

        self.chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if self.chromium is None:
            raise SystemExit("--dashboard needs chromium (apt-get install chromium)")
        self.hub = DashboardHub(settings.dashboard.history)
        self.sink = InsightsSink(Insights(settings.trends, settings.alerts), [self.hub])
        self.stack = contextlib.AsyncExitStack()
        self.browser: subprocess.Popen | None = None
        self.max_pages = 0

    async def __aenter__(self) -> OpenDashboard:
        import tempfile

        from emomon.services.dashboard.server import serve

        url = await self.stack.enter_async_context(serve(self.hub, "127.0.0.1", 0))
        profile = self.stack.enter_context(tempfile.TemporaryDirectory())
        self.browser = subprocess.Popen(
            [self.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(300):  # the page is open once its event stream is connected
            if self.hub.pages:
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("the dashboard page did not connect within 30 s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.max_pages = max(self.max_pages, self.hub.pages)
        assert self.browser is not None
        self.browser.terminate()
        self.browser.wait(10)
        await self.stack.aclose()


class Recording:
    """One conversation to replay: its file, reference turns and words, and length."""

    def __init__(self, path: Path, turns: list[tuple[float, float, str]], words: list[str]) -> None:
        import wave

        self.path, self.turns, self.words = path, turns, words
        with wave.open(str(path)) as w:
            self.seconds = w.getnframes() / w.getframerate()


def the_call() -> list[Recording]:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.scoring import read_rttm, read_stm_words

    return [
        Recording(
            CALL, read_rttm(CALL.with_suffix(".rttm")), read_stm_words(CALL.with_suffix(".stm"))
        )
    ]


def synthetic(ravdess: Path, count: int, folder: Path) -> list[Recording]:
    """``count`` synthetic conversations (``bench_turns.conversations``) written to ``folder``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    from bench_turns import conversations, write_wav

    from tests.helpers.scoring import normalise

    texts: list[list[str]] = []
    out = []
    for i, (x, turns) in enumerate(conversations(ravdess, count, texts=texts)):
        path = folder / f"conv{i:02d}.wav"
        write_wav(path, x)
        out.append(Recording(path, turns, [w for t in texts[i] for w in normalise(t)]))
    return out


CPU: list = []  # (CPU s by thread kind, wall s) of the last run, for --cpu-by-thread


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each live thread of this process: tid -> (kind, seconds). A Python
    thread's kind is its name without the number (``asr``: the ASR pool, feature extraction
    and waiting on CTranslate2; ``lid``: the language detector's; ``fusion``: the worker;
    ``asyncio``: ``asyncio.to_thread`` workers, i.e. turn detection (CAM++, segmentation) and
    speaker labelling; ``MainThread``: the event loop, VAD, sinks); ``native`` is every thread
    no Python code runs in: CTranslate2's compute threads (ASR and language detector)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc(5): utime, stime = 14, 15
        name = names.get(int(tid))
        kind = "native" if name is None else re.sub(r"_\d+$", "", name)
        out[int(tid)] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_kind(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per thread kind since ``before`` (threads that ended meanwhile are lost)."""
    out: dict[str, float] = {}
    for tid, (kind, secs) in thread_cpu().items():
        out[kind] = out.get(kind, 0.0) + secs - before.get(tid, (kind, 0.0))[1]
    return out


def replays(
    n: int,
    staggered: bool,
    recordings: list[Recording],
    per_slot: int = 3,
    score_all: bool = False,
) -> tuple[list[tuple[str, object]], dict[str, Recording]]:
    """The sessions of one run, and the ones to score with what each replays. In step: ``n``
    replays that start together, session ``j`` playing recording ``j`` (modulo their number).
    Staggered: ``n`` slots, slot ``i`` starting ``i / n`` of a (mean) call later, each
    replaying ``per_slot`` calls back to back as new sessions (new speakers, new language), so
    calls start and end at the rate ``n`` concurrent calls of this length have; only the middle
    call of each slot is scored (``per_slot // 2``; with 3 or more calls it runs while all ``n``
    slots are busy); ``score_all``: every call, e.g. one slot playing many conversations one
    after the other."""
    from emomon.streamer.sources.file import FileSource

    class LaterSource(FileSource):
        def __init__(self, path: Path, delay_s: float) -> None:
            super().__init__(path, realtime=True)
            self.delay_s = delay_s

        async def chunks(self):  # type: ignore[no-untyped-def, override]
            await asyncio.sleep(self.delay_s)
            async for chunk in super().chunks():
                yield chunk

    if not staggered:
        plays = {f"call-{i + 1}": recordings[i % len(recordings)] for i in range(n)}
        sessions = [(name, FileSource(r.path, realtime=True)) for name, r in plays.items()]
        return sessions, plays  # type: ignore[return-value]
    slots = [
        [recordings[(per_slot * i + k) % len(recordings)] for k in range(per_slot)]
        for i in range(n)
    ]
    # slot i starts i/n of a mean call late; each of its calls starts when the one before ends
    mean = float(np.mean([r.seconds for slot in slots for r in slot]))
    sessions = [
        (
            f"slot-{i + 1}-call-{k + 1}",
            LaterSource(r.path, i * mean / n + sum(p.seconds for p in slot[:k])),
        )
        for i, slot in enumerate(slots)
        for k, r in enumerate(slot)
    ]
    scored = {
        f"slot-{i + 1}-call-{k + 1}": r
        for i, slot in enumerate(slots)
        for k, r in enumerate(slot)
        if score_all or k == per_slot // 2
    }
    return sessions, scored  # type: ignore[return-value]


async def run_parallel(
    n: int,
    transcriber,
    worker,
    speakers: str = "cluster",
    extra: dict | None = None,
    dashboard: bool = False,
    staggered: bool = False,
    recordings: list[Recording] | None = None,
    per_slot: int = 3,
    score_all: bool = False,
) -> tuple[list, list[float], dict[str, Recording]]:  # type: ignore[no-untyped-def]
    from emomon.services.pipeline import Pipeline
    from emomon.services.settings import load_settings

    ov: dict = {
        "source": {"realtime": True},
        "speakers": {"num_speakers": 2, "mode": speakers},
    }
    for section, fields in (extra or {}).items():
        ov.setdefault(section, {}).update(fields)
    settings = load_settings(overrides=ov, environ={})
    sessions, scored = replays(n, staggered, recordings or the_call(), per_slot, score_all)
    if not dashboard:
        p = Pipeline(settings, [], transcriber=transcriber, worker=worker)
        before, t0 = thread_cpu(), time.perf_counter()
        stats = await p.run(sessions)  # type: ignore[arg-type]
        CPU[:] = [(cpu_by_kind(before), time.perf_counter() - t0)]
        return [e for e in stats.events_list if e.session in scored], stats.sink_ms, scored
    async with OpenDashboard(settings) as dash:
        p = Pipeline(settings, [dash.sink], transcriber=transcriber, worker=worker)
        stats = await p.run(sessions)  # type: ignore[arg-type]
        pages = dash.hub.pages
    if pages < 1:
        raise SystemExit("the dashboard page was not connected at the end of the run")
    return [e for e in stats.events_list if e.session in scored], stats.sink_ms, scored


DETECTORS: list = []  # every TurnDetector the sessions create, for their counters


def lid_counts(transcriber: Any) -> tuple[float, float, float, float]:
    """The language detector's calls, seconds, skipped and deferred measurements so far."""
    det, q = transcriber.detector, transcriber._lid
    if det is None or q is None:
        return 0.0, 0.0, 0.0, 0.0
    return float(det.calls), float(det.seconds), float(q.skipped), float(q.deferred)


def watch_detectors() -> None:
    from emomon.streamer import speakers

    init = speakers.TurnDetector.__init__

    def recording_init(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        init(self, *a, **kw)
        DETECTORS.append(self)

    speakers.TurnDetector.__init__ = recording_init  # type: ignore[method-assign]


EOT: list = []  # every EndOfTurn hook the sessions create


def watch_end_of_turn() -> None:
    from emomon.streamer import end_of_turn

    init = end_of_turn.EndOfTurn.__init__

    def recording_init(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        init(self, *a, **kw)
        EOT.append(self)

    end_of_turn.EndOfTurn.__init__ = recording_init  # type: ignore[method-assign]


def eot_counts() -> str:
    """Pauses the end-of-turn model was asked about / utterances it closed early, model p95 ms."""
    asked, closed = sum(h.asked for h in EOT), sum(h.closed for h in EOT)
    ms = [1000 * x for h in EOT for x in h.model_s]
    EOT.clear()
    return f"{asked}/{closed} {pct(ms, 95):.0f}ms" if ms else "off"


def turn_counts() -> str:
    """Cuts by resolution (frames / short / long), long-window cuts vetoed, updates whose
    short windows were shed under load: summed over the sessions of one run."""
    c = {k: sum(d.cuts[k] for d in DETECTORS) for k in ("frames", "short", "long")}
    veto = sum(d.vetoed for d in DETECTORS)
    shed = sum(d.short_skipped for d in DETECTORS)
    DETECTORS.clear()
    return f"{c['frames']}/{c['short']}/{c['long']}/{veto}/{shed}"


def quality(events: list, refs: dict[str, Recording]) -> tuple[float, float, float]:  # type: ignore[type-arg]
    """Mean over sessions of speaker-turn agreement with the reference turns and word error
    rate, scored as the end-to-end test does, so a faster setting shows what it costs; and the
    worst session's agreement."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers.scoring import normalise, speaker_agreement, wer

    agree, errs = [], []
    for session in sorted(refs):  # a scored session without events scores 0 / WER 1
        ref = refs[session]
        evs = sorted((e for e in events if e.session == session), key=lambda e: e.start_s)
        agree.append(speaker_agreement(ref.turns, [(e.start_s, e.end_s, e.speaker) for e in evs]))
        errs.append(wer(ref.words, [w for e in evs for w in normalise(e.text or "")]))
        if SHOW_WER_ABOVE is not None and errs[-1] > SHOW_WER_ABOVE:
            print(
                f"   {session} ({ref.path.name}): WER {errs[-1]:.3f}; reference: {' '.join(ref.words)}"
            )
            for e in evs:
                print(f"     {e.start_s:6.2f}-{e.end_s:6.2f} s {e.speaker}: {e.text!r}")
    return float(np.mean(agree)), float(np.mean(errs)), float(min(agree))


SHOW_WER_ABOVE: float | None = None  # --show-wer-above


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS of the command's own process, in MiB.

    Not ``getrusage(RUSAGE_CHILDREN)``: a child started with vfork/fork carries the parent's
    high-water mark through ``exec`` into its ``ru_maxrss``, so after N parallel pipelines in
    this process it reported this process's size (2.1 GB after N = 16), not emomon's. The
    kernel's ``VmHWM`` of the child after ``exec`` is its own; it is polled until it exits.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status = Path(f"/proc/{proc.pid}/status")
    peak_kb = 0
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"emomon run failed ({proc.returncode}): {err.decode()[-500:]}")
    if peak_kb == 0:  # no /proc (not Linux): the kernel's figure for all children instead
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return peak_kb / 1024


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 6])
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument(
        "--per-utterance",
        action="store_true",
        help="also print every event of the first session: span, speaker, latency by stage, text",
    )
    ap.add_argument(
        "--speakers",
        choices=["cluster", "channel"],
        default="cluster",
        help="cluster: find the two voices in the mono call (default); channel: treat the channel as one "
        "person, as with RTP SSRCs or one mic per person (no turn detection)",
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="settings override, as for `emomon --set` (repeatable)",
    )
    ap.add_argument(
        "--end-of-turn",
        choices=["settings", "on", "off", "both"],
        default="settings",
        help="the end-of-turn model: as the settings say (default); on: their pause, or "
        f"{EOT_ON_PAUSE_MS} ms where they say 0 (off); off; both: each N off, then on",
    )
    ap.add_argument(
        "--staggered",
        action="store_true",
        help="calls that do not start together: N slots, slot i starting i/N of a call later, "
        "each replaying --per-slot calls back to back as new sessions; only each slot's middle "
        "call (all N slots busy) is scored (default: N replays that start at the same moment)",
    )
    ap.add_argument(
        "--per-slot",
        type=int,
        default=3,
        metavar="K",
        help="with --staggered: calls each slot replays back to back (default 3)",
    )
    ap.add_argument(
        "--score-all",
        action="store_true",
        help="with --staggered: score every call, not only each slot's middle one (e.g. "
        "--synthetic DIR --parallel 1 --staggered --per-slot 8 --score-all: eight different "
        "conversations, each starting when the one before has been played)",
    )
    ap.add_argument(
        "--show-wer-above",
        type=float,
        metavar="X",
        help="print every scored session whose WER is above X, with its reference and each "
        "event's transcript (to look into runaway transcripts)",
    )
    ap.add_argument(
        "--cpu-by-thread",
        action="store_true",
        help="also print each run's CPU seconds by thread kind (ASR pool, CTranslate2's own "
        "threads, turn detection, worker, event loop; see thread_cpu)",
    )
    ap.add_argument(
        "--by-time",
        type=int,
        default=0,
        metavar="S",
        help="also print latency p50/p95 and p95 by stage of the events whose speech ended in "
        "each S-second stretch of the call (where in the call the tail comes from)",
    )
    ap.add_argument(
        "--synthetic",
        type=Path,
        metavar="RAVDESS_DIR",
        help="replay synthetic two-actor telephone conversations made from this RAVDESS folder "
        "(a dev set, as bench_turns.py) instead of the call",
    )
    ap.add_argument(
        "--conversations",
        type=int,
        default=24,
        help="with --synthetic: how many different conversations (default 24)",
    )
    ap.add_argument(
        "--far-factor",
        type=float,
        metavar="X",
        help="the load level at which every session's turns come from the frames alone "
        "(streamer/stages.py: LoadSignal.FAR_FACTOR, a lag of X times speakers.change_max_lag_ms; "
        "default: the code's)",
    )
    ap.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the dashboard and keep its page open in headless Chromium during the runs",
    )
    args = ap.parse_args()
    extra = overrides(args.sets)
    global SHOW_WER_ABOVE
    SHOW_WER_ABOVE = args.show_wer_above
    eot_runs = {"settings": [None], "on": [True], "off": [False], "both": [False, True]}[
        args.end_of_turn
    ]

    from emomon.services.pipeline import transcriber_config
    from emomon.services.settings import load_settings
    from emomon.services.worker import FusionWorker
    from emomon.streamer.config import set_torch_threads
    from emomon.streamer.stages import shared_embedder, shared_segmentation
    from emomon.streamer.transcriber import Transcriber

    if args.far_factor is not None and args.far_factor <= 0:
        raise SystemExit("--far-factor must be above 0")
    if args.per_slot < 1:
        raise SystemExit("--per-slot must be at least 1")
    if not args.staggered and (args.per_slot != 3 or args.score_all):
        raise SystemExit("--per-slot and --score-all go with --staggered")
    if args.far_factor is not None:
        from emomon.streamer.stages import LoadSignal

        LoadSignal.FAR_FACTOR = args.far_factor
    base = load_settings(overrides=extra, environ={})
    transcriber = Transcriber(transcriber_config(base))
    worker = FusionWorker(base.worker)
    set_torch_threads(base.worker.torch_threads)  # as the pipeline does, before the models load
    shared_embedder(base.speakers.runtime)
    if base.speakers.segmentation:
        shared_segmentation(base.speakers.runtime)
    if any(eot_runs) or base.vad.end_of_turn_pause_ms:
        from emomon.streamer.end_of_turn import shared_end_of_turn

        shared_end_of_turn()  # loaded before the clock runs, as the sessions share it
    import tempfile

    tmp = tempfile.TemporaryDirectory()
    recordings = (
        synthetic(args.synthetic, args.conversations, Path(tmp.name))
        if args.synthetic
        else the_call()
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    if args.synthetic:
        print(
            f"replaying {len(recordings)} synthetic conversations (RAVDESS actors, telephone band), "
            f"{np.mean([r.seconds for r in recordings]):.0f} s each on average, not the call"
        )
    print(
        f"model: {worker.model.model_id}; ASR: {transcriber.model_id}; speakers: {args.speakers}; "
        f"real-time pace, {'staggered starts' if args.staggered else 'all starting together'}; "
        f"settings overrides: {extra or 'none'}; far-behind factor: {far_factor()}; "
        f"dashboard: {'open in headless Chromium' if args.dashboard else 'off'}\n"
    )
    header = "N  events  p50 ms  p95 ms  agree   WER  | p95 by stage (ms): " + " ".join(
        f"{s:>12}" for s in (*STAGES, "sink")
    )
    header += " | cuts f/s/l/veto/shed | end of turn asked/closed p95 | worst agree"
    watch_detectors()
    watch_end_of_turn()
    print(header)
    runs = [(n, eot) for n in args.parallel for eot in eot_runs]
    for n, eot in runs:
        run_extra = extra
        if eot is not None:
            pause = (base.vad.end_of_turn_pause_ms or EOT_ON_PAUSE_MS) if eot else 0
            run_extra = {**extra, "vad": {**extra.get("vad", {}), "end_of_turn_pause_ms": pause}}
        lid0 = lid_counts(transcriber)
        events, sink_ms, refs = asyncio.run(
            run_parallel(
                n,
                transcriber,
                worker,
                args.speakers,
                run_extra,
                args.dashboard,
                args.staggered,
                recordings,
                args.per_slot,
                args.score_all,
            )
        )
        lat = [e.latency_ms for e in events]
        by = {s: [e.stage_ms.get(s, 0.0) for e in events] for s in STAGES}
        stage_cols = (
            " ".join(f"{pct(by[s], 95):12.0f}" for s in STAGES) + f" {pct(sink_ms, 95):12.2f}"
        )
        agree, err, worst = quality(events, refs)
        print(
            f"{n:<2} {len(events):6d}  {pct(lat, 50):6.0f}  {pct(lat, 95):6.0f}  {agree:5.3f} {err:5.3f}"
            f"  | {' ' * 19}{stage_cols} | {turn_counts()} | {eot_counts()} | {worst:5.3f}"
        )
        if transcriber.detector is not None:
            calls, secs, skipped, deferred = (
                b - a for a, b in zip(lid0, lid_counts(transcriber), strict=True)
            )
            print(
                f"   language detector: {calls:.0f} calls ({secs:.1f} s); {skipped:.0f} "
                f"utterances not measured ({deferred:.0f} put off by load with the detector free)"
            )
        if args.cpu_by_thread and CPU:
            kinds, wall = CPU[0]
            total = sum(kinds.values())
            parts = ", ".join(
                f"{k} {v:.1f} ({100 * v / total:.0f} %)"
                for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])
                if v >= 0.05
            )
            print(f"   CPU s by thread: {parts}; {total:.1f} s in {wall:.1f} s of wall time")
        if args.by_time:
            # every session replays the same call in step: where in the call is the tail?
            for lo in range(0, int(max(e.end_s for e in events)) + 1, args.by_time):
                part = [e for e in events if lo <= e.end_s < lo + args.by_time]
                if part:
                    xs = [e.latency_ms for e in part]
                    stages = " ".join(
                        f"{s}={pct([e.stage_ms.get(s, 0.0) for e in part], 95):.0f}" for s in STAGES
                    )
                    print(
                        f"   speech ending {lo:3d}-{lo + args.by_time:3d} s: {len(xs):3d} events, "
                        f"p50 {pct(xs, 50):5.0f} p95 {pct(xs, 95):5.0f} ms; p95 by stage {stages}"
                    )
        if args.per_utterance:
            first = min(e.session for e in events)
            for e in sorted((e for e in events if e.session == first), key=lambda e: e.start_s):
                stages = " ".join(f"{k}={e.stage_ms.get(k, 0.0):.0f}" for k in STAGES)
                print(
                    f"   {e.start_s:6.2f}-{e.end_s:6.2f} s {e.speaker:<10} {e.latency_ms:5.0f} ms "
                    f"({stages}) {(e.text or '')[:50]!r}"
                )
        sys.stdout.flush()
    transcriber.close()
    worker.close()

    if not args.no_rss:
        t0 = time.time()
        cmd = [sys.executable, "-m", "emomon.services", "run", "--source", f"file:{CALL}"]
        rss_mb = peak_rss_mb(cmd + ["--num-speakers", "2", "--no-console"])
        print(
            f"\npeak RSS of `emomon run` on the call (fast replay): {rss_mb:.0f} MiB ({time.time() - t0:.1f} s wall)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
