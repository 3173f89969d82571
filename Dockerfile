# opsbot production image: multi-stage, non-root (numeric UID 10001), made for a read-only root
# filesystem: only /data (state: SQLite, sandbox kubeconfig) and /tmp are written.
#
#   docker build -t opsbot .                                          # FROM python:3.11-slim-bookworm
#   docker build --build-arg BASE=opsbot-base:bookworm -t opsbot .    # any Debian-like base with python3 ≥ 3.11 + venv
#   docker run --read-only --tmpfs /tmp -v opsbot-data:/data -v ./opsbot.yaml:/etc/opsbot/opsbot.yaml:ro \
#       -e OPSBOT_DISCORD_TOKEN=… -p 8080:8080 opsbot
#
# scripts/check-image builds it here from a debootstrapped base (no registry) and runs it that way.
# The classic builder and BuildKit both build it (no BuildKit-only syntax, no frontend to pull).

ARG BASE=python:3.11-slim-bookworm

# --- build: a virtualenv in /opt/opsbot --------------------------------------------------------
FROM ${BASE} AS build
# pip trusts the base image's CA store (not its own certifi copy), so a base that trusts a
# TLS-inspecting proxy builds behind it. Build-stage only: nothing of it reaches the runtime image.
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# `python3`, not `python`: the official images have both (/usr/local/bin), Debian's python3 only /usr/bin/python3.
RUN python3 -m venv /opt/opsbot
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a code change rebuilds only the last layer.
COPY pyproject.toml README.md ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/opsbot/bin/pip install --no-compile -r /tmp/requirements.txt
COPY bot ./bot
COPY commands ./commands
COPY alerts ./alerts
COPY config ./config
COPY sandbox ./sandbox
# No bytecode for site-packages (--no-compile): it would add ~115 MB (mostly the kubernetes
# client) to save ~1.2 s per start. With PYTHONDONTWRITEBYTECODE the read-only image never tries
# to write any. pip and setuptools are not needed at run time.
RUN /opt/opsbot/bin/pip install --no-compile --no-deps . \
    && /opt/opsbot/bin/python -m pip uninstall -y -q pip setuptools \
    && /opt/opsbot/bin/opsbot --help >/dev/null

# --- runtime ----------------------------------------------------------------------------------
FROM ${BASE}
ARG UID=10001
RUN groupadd --system --gid ${UID} opsbot \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /data --no-create-home --shell /usr/sbin/nologin opsbot \
    && mkdir -p /data /etc/opsbot \
    && chown ${UID}:${UID} /data && chmod 0750 /data
COPY --from=build /opt/opsbot /opt/opsbot
# MPLCONFIGDIR: matplotlib's config and font cache (!graph, alert graphs) go to /tmp, not ~.
# PYTHONDONTWRITEBYTECODE: nothing tries to write .pyc files next to the sources.
ENV PATH=/opt/opsbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    OPSBOT_DATA_DIR=/data \
    OPSBOT_WEBHOOK_LISTEN=0.0.0.0:8080
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER ${UID}:${UID}
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# /healthz on the port of OPSBOT_WEBHOOK_LISTEN (set that variable, not only --webhook-listen,
# when you change the port); the server must listen on 127.0.0.1, 0.0.0.0 or [::].
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/opsbot/bin/python", "-c", "import os, sys, urllib.request as r; port = os.environ.get('OPSBOT_WEBHOOK_LISTEN', ':8080').rpartition(':')[2]; sys.exit(0 if r.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
# opsbot run stops cleanly on SIGTERM (finishes background work, closes the Discord session);
# exec form, so python is PID 1 and receives it. It starts no subprocesses: no init needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/opsbot/bin/opsbot"]
CMD ["run", "--config", "/etc/opsbot/opsbot.yaml"]
