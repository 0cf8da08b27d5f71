"""Two ``emomon worker`` processes; one is SIGKILLed mid-batch; the survivor's janitor recovers its work."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from redis_helpers import (  # noqa: F401 - redis_server_fixture provides redis_server
    REPO,
    RedisServer,
    free_port,
    read_jsonl,
    redis_server_fixture,
    synthetic_utterance,
    wait_for,
    worker_argv,
)

from emomon.services.queue import wire
from emomon.services.queue.redis import connect
from emomon.services.settings import RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 200
STREAM = "t:failover"


def _sync(coro: Any) -> Any:
    return asyncio.run(coro)


async def _consumers(url: str) -> dict[str, int]:
    """Consumer name -> pending count, from XINFO CONSUMERS."""
    c = connect(url)
    try:
        rows = await c.xinfo_consumers(STREAM, RedisSettings().group)
    except Exception:  # noqa: BLE001 - the group does not exist until a worker creates it
        rows = []
    finally:
        await c.aclose()
    return {
        r["name"].decode() if isinstance(r["name"], bytes) else r["name"]: int(r["pending"])
        for r in rows
    }


async def _produce(url: str, first: int, stop: int) -> list[str]:
    c = connect(url)
    utts = [synthetic_utterance(i, session=f"s{i % 4}") for i in range(first, stop)]
    async with c.pipeline(transaction=False) as pipe:
        for u in utts:
            pipe.xadd(STREAM, wire.encode(u))
        await pipe.execute()
    await c.aclose()
    return [u.utterance_id for u in utts]


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sigkill_mid_batch_loses_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    jsonl = {name: tmp_path / f"{name}.jsonl" for name in ("victim", "survivor")}
    port = free_port()
    extra = ["--max-batch", "8", "--max-wait-ms", "5", "--claim-idle-ms", "1000"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "integration")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in jsonl}  # noqa: SIM115 - closed below
    try:
        for name, path in jsonl.items():
            more = ["--metrics-port", str(port)] if name == "survivor" else []
            argv = worker_argv(redis_server.url, name, path, stream=STREAM, extra=[*extra, *more])
            procs[name] = subprocess.Popen(
                argv, env=env, stdout=logs[name], stderr=subprocess.STDOUT, cwd=tmp_path
            )

        # Both joined the group before any work exists, so both get a share.
        def joined() -> bool:
            dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
            assert not dead, f"worker exited early: {dead}"
            return set(_sync(_consumers(redis_server.url))) >= set(jsonl)

        wait_for(joined, 60, "both workers to join the group")
        # A first part, so the victim has published some events when it dies; the rest arrives
        # just before the freeze below, so there is work in flight to catch it holding.
        sent = _sync(_produce(redis_server.url, 0, N // 4))

        # Kill the victim while it holds a batch it has not acked. SIGSTOP freezes it first, so
        # the pending count we read is exactly what it holds when SIGKILL lands (without the
        # freeze it could ack its last batch between the check and the kill).
        wait_for(
            lambda: len(read_jsonl(jsonl["victim"])) > 0,
            30,
            "the victim to publish some events",
            interval_s=0.005,
        )
        sent += _sync(_produce(redis_server.url, N // 4, N))

        def frozen_holding_entries() -> bool:
            procs["victim"].send_signal(signal.SIGSTOP)
            if _sync(_consumers(redis_server.url)).get("victim", 0) > 0:
                return True
            procs["victim"].send_signal(signal.SIGCONT)
            return False

        wait_for(
            frozen_holding_entries, 30, "the victim to hold un-acked entries", interval_s=0.002
        )
        procs["victim"].send_signal(signal.SIGKILL)
        procs["victim"].wait(10)
        orphaned = _sync(_consumers(redis_server.url))["victim"]
        assert orphaned > 0, "the victim died holding no entries: the test did not test anything"

        def all_done() -> bool:
            seen = {e["utterance_id"] for p in jsonl.values() for e in read_jsonl(p)}
            return seen >= set(sent)

        def reclaimed_total() -> float:
            _, text = _http(port, "/metrics")
            vals = [
                float(ln.split()[-1])
                for ln in text.splitlines()
                if ln.startswith("emomon_reclaimed_total")
            ]
            return vals[0] if vals else 0.0

        # The victim may have written events for its last batch before dying un-acked: wait for
        # the survivor's janitor to have reclaimed the orphans, not only for the events.
        wait_for(lambda: reclaimed_total() >= orphaned, 45, "the janitor to reclaim the orphans")
        wait_for(all_done, 45, "every utterance to have an event")
        events = [e for p in jsonl.values() for e in read_jsonl(p)]
        ids = {e["event_id"] for e in events}
        assert len(ids) == N  # duplicates allowed (redelivered), losses not
        survivor = read_jsonl(jsonl["survivor"])
        assert len(survivor) > 0

        status, body = _http(port, "/healthz")
        assert status == 200 and json.loads(body)["consumer"] == "survivor"
        status, metrics = _http(port, "/metrics")
        reclaimed = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("emomon_reclaimed_total")
        ]
        assert status == 200 and reclaimed and reclaimed[0] >= orphaned

        # Graceful stop: SIGTERM finishes the batch in hand, acks, exits 0.
        procs["survivor"].send_signal(signal.SIGTERM)
        assert procs["survivor"].wait(20) == 0
        c = connect(redis_server.url)
        assert _sync(c.xpending(STREAM, RedisSettings().group))["pending"] == 0
        print(
            f"split: victim {len(read_jsonl(jsonl['victim']))} survivor {len(survivor)}; reclaimed {reclaimed[0]:.0f}"
        )
    except BaseException:
        for name in jsonl:
            logs[name].flush()
            print(f"--- {name} log ---\n" + (tmp_path / f"{name}.log").read_text()[-3000:])
        raise
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
