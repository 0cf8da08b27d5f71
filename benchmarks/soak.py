"""Soak of the distributed mode with faults (issue #18): not part of the test run.

    python benchmarks/soak.py                 # 60 minutes
    python benchmarks/soak.py --minutes 5     # a short proof run

It starts its own ``redis-server`` (AOF, fsync always) and ``mosquitto`` (persistence) on free
loopback ports, one ``emomon stream --realtime`` replaying a recording looped to the soak's
length (default: the shipped two-speaker call), and two ``emomon worker`` processes publishing
to MQTT. A persistent QoS-1 subscriber counts what arrives. Inside the run, at 25 %, 50 % and
75 % of it:

* a worker is SIGKILLed while it holds un-acked entries (if it does within ``--hold-wait-s``)
  and a fresh one started under another consumer name; the survivor reclaims the entries, and
  the time that took is reported;
* Redis is SIGKILLed and restarted on the same port after ``--redis-down-s`` (AOF keeps the
  stream; the streamer buffers, the workers retry);
* the broker is stopped (SIGTERM, persistence saved) and restarted after ``--broker-down-s``
  (the workers' outboxes hold the events).

At the end it prints utterances produced (entries in the stream), events delivered (distinct
utterances seen on MQTT), duplicated (extra copies), lost (produced, never delivered),
dead-lettered, and the RSS of each process sampled every ``--rss-every-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt

from emomon.services.queue import wire
from emomon.services.queue.redis import connect

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = REPO / "tests" / "data" / "phone-call-2spk.wav"
STREAM = "emomon:utterances"
DEAD = "emomon:dead"
GROUP = "emomon-workers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def looped_wav(src: Path, dst: Path, seconds: float) -> float:
    """``src`` repeated to at least ``seconds`` (whole copies); return the length written."""
    with wave.open(str(src), "rb") as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    copies = max(1, int(-(-seconds * params.framerate // params.nframes)))
    with wave.open(str(dst), "wb") as out:
        out.setparams(params)
        for _ in range(copies):
            out.writeframes(frames)
    return copies * params.nframes / params.framerate


class Proc:
    """One child process with its log file; ``rss_mb`` reads /proc."""

    def __init__(self, name: str, argv: list[str], logdir: Path) -> None:
        self.name, self.argv, self.logdir = name, argv, logdir
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = open(self.logdir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.p = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def signal(self, sig: int, wait_s: float = 15.0) -> None:
        if self.alive():
            assert self.p is not None
            self.p.send_signal(sig)
            try:
                self.p.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def rss_mb(self) -> float | None:
        if not self.alive():
            return None
        assert self.p is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return None


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


async def pending_of(url: str, consumer: str) -> int:
    client = connect(url)
    try:
        rows = await client.xinfo_consumers(STREAM, GROUP)
    except Exception:  # noqa: BLE001 - Redis or the group not there: nothing held
        rows = []
    finally:
        await client.aclose()
    names = {(r["name"].decode() if isinstance(r["name"], bytes) else r["name"]): r for r in rows}
    return int(names[consumer]["pending"]) if consumer in names else 0


async def kill_holding(proc: Proc, url: str, wait_s: float) -> dict[str, Any]:
    """SIGKILL ``proc`` while it holds un-acked entries if that happens within ``wait_s``
    (frozen with SIGSTOP first, so it cannot ack between the check and the kill); then time
    how long the other workers take to reclaim them."""
    assert proc.p is not None
    held, deadline = 0, time.monotonic() + wait_s
    while time.monotonic() < deadline:
        proc.p.send_signal(signal.SIGSTOP)
        held = await pending_of(url, proc.name)
        if held:
            break
        proc.p.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.05)
    proc.signal(signal.SIGKILL)
    t_kill = time.monotonic()
    while held and await pending_of(url, proc.name) and time.monotonic() - t_kill < 120:
        await asyncio.sleep(0.2)
    reclaim_s = round(time.monotonic() - t_kill, 1) if held else None
    print(f"  worker {proc.name} killed holding {held} entries; reclaimed after {reclaim_s} s")
    return {"held_at_kill": held, "reclaimed_after_s": reclaim_s}


def emomon(*args: str) -> list[str]:
    return [sys.executable, "-m", "emomon.services.cli", *args]


class Subscriber:
    """Persistent QoS-1 session on every speaker's emotion topic; reconnects on its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ids: Counter[str] = Counter()  # utterance id -> copies received
        self.ready = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="soak-subscriber", clean_session=False
                ) as c:
                    await c.subscribe("emomon/+/+/emotion", qos=1)
                    self.ready.set()
                    async for m in c.messages:
                        assert isinstance(m.payload, bytes)
                        self.ids[json.loads(m.payload)["utterance_id"]] += 1
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="emomon-soak-"))
    total_s = args.minutes * 60
    audio = work / "soak.wav"
    audio_s = looped_wav(Path(args.audio), audio, total_s)
    rport, mport = free_port(), free_port()
    redis_argv = [shutil.which("redis-server") or "redis-server", "--port", str(rport)]
    redis_argv += ["--bind", "127.0.0.1", "--save", "", "--dir", str(work)]
    redis_argv += ["--appendonly", "yes", "--appendfsync", "always"]
    (work / "mosquitto.conf").write_text(
        f"listener {mport} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {work}/\nautosave_interval 1\nuser {getpass.getuser()}\n"
    )
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    redis = Proc("redis", redis_argv, work).start()
    broker = Proc("mosquitto", [mosq, "-c", str(work / "mosquitto.conf")], work).start()
    wait_port(rport)
    wait_port(mport)
    sub = Subscriber(mport)
    sub_task = asyncio.create_task(sub.run())
    await asyncio.wait_for(sub.ready.wait(), 10)

    rurl, murl = f"redis://127.0.0.1:{rport}/0", f"mqtt://127.0.0.1:{mport}"

    def worker(name: str) -> Proc:
        argv = emomon("worker", "--redis-url", rurl, "--mqtt-url", murl, "--consumer", name)
        argv += ["--device", "cpu", "--no-console", "--set", f"mqtt.client_id={name}"]
        argv += ["--set", "mqtt.wait_for_broker=true", "--log-level", "INFO"]
        return Proc(name, argv, work).start()

    workers = {"w1": worker("w1"), "w2": worker("w2")}
    stream_argv = emomon("stream", str(audio), "--realtime", "--session", "soak")
    stream_argv += ["--redis-url", rurl, "--log-level", "INFO"]
    # the workers load the model first, so the stream does not start into an empty group
    await asyncio.sleep(args.warmup_s)
    streamer = Proc("streamer", stream_argv, work).start()
    t0 = time.monotonic()
    faults: list[dict[str, Any]] = []
    rss: list[dict[str, Any]] = []
    plan = [(0.25, "worker"), (0.50, "redis"), (0.75, "broker")]
    next_rss = 0.0
    print(f"soak: {args.minutes} min, audio {audio_s:.0f} s, logs in {work}", flush=True)
    while streamer.alive():
        now = time.monotonic() - t0
        if now >= next_rss:
            sample = {
                "t_s": round(now),
                **{p.name: p.rss_mb() for p in (streamer, *workers.values())},
            }
            rss.append({k: (round(v, 1) if isinstance(v, float) else v) for k, v in sample.items()})
            print(f"  t={now:6.0f}s rss MB {rss[-1]}  delivered {len(sub.ids)}", flush=True)
            next_rss += args.rss_every_s
        if plan and now >= plan[0][0] * total_s:
            _, kind = plan.pop(0)
            faults.append({"t_s": round(now), "fault": kind})
            print(f"  t={now:6.0f}s fault: {kind}", flush=True)
            if kind == "worker":
                faults[-1].update(await kill_holding(workers["w1"], rurl, args.hold_wait_s))
                workers["w1b"] = worker("w1b")
            elif kind == "redis":
                redis.signal(signal.SIGKILL)
                await asyncio.sleep(args.redis_down_s)
                redis.start()
            else:
                broker.signal(signal.SIGTERM)
                await asyncio.sleep(args.broker_down_s)
                broker.start()
        await asyncio.sleep(1.0)
    streamed_s = time.monotonic() - t0

    client = connect(rurl)
    produced = [wire.decode(f).utterance_id for _, f in await client.xrange(STREAM)]
    dead = await client.xlen(DEAD)
    deadline = time.monotonic() + args.drain_s
    while time.monotonic() < deadline and not set(produced) <= set(sub.ids):
        await asyncio.sleep(1.0)
    await client.aclose()
    final_rss = {p.name: p.rss_mb() for p in workers.values()}
    for p in workers.values():
        p.signal(signal.SIGTERM)
    sub_task.cancel()
    await asyncio.gather(sub_task, return_exceptions=True)
    broker.signal(signal.SIGTERM)
    redis.signal(signal.SIGTERM)
    delivered = set(sub.ids) & set(produced)
    return {
        "minutes": args.minutes,
        "streamed_s": round(streamed_s),
        "streamer_exit": streamer.p.returncode if streamer.p else None,
        "produced": len(set(produced)),
        "delivered": len(delivered),
        "duplicated": sum(sub.ids.values()) - len(sub.ids),
        "lost": len(set(produced) - delivered),
        "dead_lettered": dead,
        "faults": faults,
        "rss_mb": rss,
        "workers_rss_mb_at_end": final_rss,
        "logs": str(work),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="length of the replay (default 60)")
    p.add_argument("--audio", default=str(DEFAULT_AUDIO), help="recording to loop (WAV)")
    p.add_argument("--redis-down-s", type=float, default=10.0)
    p.add_argument("--broker-down-s", type=float, default=15.0)
    p.add_argument("--rss-every-s", type=float, default=60.0)
    p.add_argument("--warmup-s", type=float, default=30.0, help="workers load the model first")
    p.add_argument("--drain-s", type=float, default=120.0, help="wait for the last events")
    p.add_argument(
        "--hold-wait-s",
        type=float,
        default=60.0,
        help="how long to wait for the worker to hold entries before killing it anyway",
    )
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = p.parse_args()
    if not Path(args.audio).is_file():
        sys.exit(f"soak: no such recording: {args.audio}")
    report = asyncio.run(soak(args))
    for key in ("produced", "delivered", "duplicated", "lost", "dead_lettered"):
        print(f"{key:>14}: {report[key]}")
    print(json.dumps({k: report[k] for k in ("faults", "workers_rss_mb_at_end")}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
