"""How late do events of a silence-suppressed call come? (issue #15 target)

    python benchmarks/bench_rtp_dtx.py               # one call: PCMU+CN, G.722+CN, Opus (~40 s)
    python benchmarks/bench_rtp_dtx.py --repeat 3    # more events for the distribution

A call of three legs replayed at original timing, each as a phone with silence suppression
sends it (``tests/integration/dtx_call.py``: no packets in silence, comfort noise, a pause longer
than the idle timeout, BYE or not). For every event it prints the time from the *sending* of
the packet holding the end of speech to the event reaching the sinks, and the event's own
``latency_ms``; then the distribution, each leg's last utterance, and the target:
``vad.hangover_ms + rtp_jitter_ms + 0.6 s`` (issue #15). ASR and the emotion model run on this
machine's CPU: on a busy machine the figures say more about the machine than the code.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="calls to run")
    ap.add_argument("--hangover-ms", type=int, default=300)
    ap.add_argument("--jitter-ms", type=int, default=60)
    ap.add_argument(
        "--early-asr-ms",
        type=int,
        default=None,
        help="vad.early_asr_ms (default: the settings' default; 0 = off)",
    )
    ap.add_argument("--language", default=None, help="asr.language (default: detected per stream)")
    args = ap.parse_args()
    from dtx_call import run_dtx_call

    target_ms = args.hangover_ms + args.jitter_ms + 600
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"hangover {args.hangover_ms} ms, jitter window {args.jitter_ms} ms, early ASR "
        f"{'default' if args.early_asr_ms is None else args.early_asr_ms} ms, "
        f"target {target_ms} ms"
    )
    delays, errors, last = [], [], []
    for k in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            call = run_dtx_call(
                Path(tmp),
                settings={
                    "vad": {
                        "hangover_ms": args.hangover_ms,
                        **(
                            {} if args.early_asr_ms is None else {"early_asr_ms": args.early_asr_ms}
                        ),
                    },
                    **({"asr": {"language": args.language}} if args.language else {}),
                },
                jitter_ms=args.jitter_ms,
                reference=False,
            )
        for leg in call.legs:
            events = call.leg_events(leg)
            for i, (e, emitted) in enumerate(events):
                d = (emitted - call.speech_end_sent(leg, e)) * 1000
                delays.append(d)
                errors.append((e.latency_ms or 0.0) - d)
                if i == len(events) - 1:
                    last.append(d)
                print(
                    f"call {k + 1} {leg.codec:<5} {e.start_s:6.2f}-{e.end_s:6.2f} s  "
                    f"emit-sent {d:6.0f} ms  latency_ms {e.latency_ms:6.0f}  "
                    f"closed {e.stage_ms.get('vad_hangover', 0):4.0f}  asr "
                    f"{e.stage_ms.get('asr', 0):4.0f}  {(e.text or '')[:40]!r}"
                )
    if not delays:
        print("no events")
        return 1
    d = np.array(delays)
    print(
        f"\nemit - end of speech sent, {d.size} events: p50 {np.percentile(d, 50):.0f} ms, "
        f"p90 {np.percentile(d, 90):.0f}, max {d.max():.0f}; within target: "
        f"{np.mean(d <= target_ms):.0%}; each leg's last utterance: "
        f"{', '.join(f'{x:.0f}' for x in last)} ms"
    )
    print(f"latency_ms - measured: max |error| {np.abs(errors).max():.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
