"""``emomon devices``: list the audio inputs PortAudio sees, for ``--source mic:INDEX|NAME``."""

from __future__ import annotations

import argparse
import json

from emomon.services.commands.common import CliError, Command
from emomon.services.commands.flags import add_common
from emomon.streamer.sources.base import SourceError


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=_devices)


COMMAND = Command("devices", "list audio input devices (for --source mic:DEVICE)", configure)


def _devices(args: argparse.Namespace) -> int:
    # Imported here so that `emomon --help` works on a machine without PortAudio.
    from emomon.streamer.sources.mic import list_input_devices

    try:
        devices = list_input_devices()
    except SourceError as e:
        raise CliError(str(e)) from e
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    if not devices:
        print("no audio input devices found (PortAudio sees none); RTP and file sources still work")
        return 1
    print(f"{'':1} {'INDEX':>5}  {'CH':>3}  {'RATE':>7}  {'HOST API':<12} NAME")
    for d in devices:
        mark = "*" if d["default"] else " "
        print(
            f"{mark} {d['index']:>5}  {d['max_input_channels']:>3}  {d['default_samplerate']:>7.0f}  "
            f"{d['hostapi']:<12} {d['name']}"
        )
    print("(* = default input; use --source mic:INDEX or mic:NAME)")
    return 0
