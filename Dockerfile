# synthquant as a BIDS App. Build:  docker build -t synthquant:0.1.0 .
# Run:    docker run --rm -v /data/bids:/data:ro -v /data/out:/out synthquant:0.1.0 /data /out participant
# The install steps are scripts/install.sh, the same script README and CI use.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NO_ET=1 \
    SYNTHQUANT_CACHE=/opt/synthquant/cache \
    SYNTHQUANT_CONTAINER=synthquant:0.1.0 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/synthquant
COPY pyproject.toml README.md run_workflow.py ./
COPY scripts ./scripts
COPY synthquant ./synthquant
# On PyPI, torch==2.13.0 resolves to the CUDA build: the image can use a GPU with --gpus all.
RUN bash scripts/install.sh \
    && chmod -R a+rX /opt/synthquant

RUN useradd --create-home --uid 1000 synthquant
USER synthquant
ENTRYPOINT ["python", "/opt/synthquant/run_workflow.py"]
CMD ["--help"]
