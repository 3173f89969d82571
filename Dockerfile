# syntax=docker/dockerfile:1
# opsbot: multi-stage build, non-root, read-only root filesystem friendly (state lives in /data).

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY commands ./commands
COPY alerts ./alerts
COPY config ./config
COPY sandbox ./sandbox
RUN python -m venv /opt/opsbot && /opt/opsbot/bin/pip install --no-compile . \
    && find /opt/opsbot -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 opsbot \
    && useradd --system --uid 10001 --gid opsbot --home-dir /data --shell /usr/sbin/nologin opsbot \
    && mkdir -p /data && chown opsbot:opsbot /data
COPY --from=build /opt/opsbot /opt/opsbot
ENV PATH=/opt/opsbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPSBOT_DATA_DIR=/data \
    OPSBOT_WEBHOOK_LISTEN=0.0.0.0:8080
USER opsbot:opsbot
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["opsbot"]
CMD ["run", "--config", "/etc/opsbot/opsbot.yaml"]
