# GPU image of the ingestion service.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    INGEST_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 ingest \
    && mkdir -p /models /data /app \
    && chown ingest:ingest /models /data /app

WORKDIR /app
COPY --chown=ingest:ingest pyproject.toml README.md ./
COPY --chown=ingest:ingest ingest ingest
COPY --chown=ingest:ingest workers workers
COPY --chown=ingest:ingest db db
COPY --chown=ingest:ingest migrations migrations

USER ingest
RUN python3.11 -m venv /app/.venv && /app/.venv/bin/pip install --no-cache-dir .
ENV PATH=/app/.venv/bin:$PATH

VOLUME ["/models", "/data"]
ENTRYPOINT ["ingest"]
