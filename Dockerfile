# syntax=docker/dockerfile:1
# Two stages: the browser bundle is built with Node, the runtime is a slim Python image
# without Node, compilers or the build's node_modules.
# The bases are build arguments: the official images by default; scripts/image.sh passes
# locally made Debian bookworm equivalents where no registry can be reached.
ARG NODE_IMAGE=node:20-slim
ARG PYTHON_IMAGE=python:3.11-slim

# --- web: the dashboard and browser client, built into web/dist -------------------------
FROM ${NODE_IMAGE} AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

# --- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app
WORKDIR /app
COPY requirements.txt ./
# Binary wheels only: the image has no compiler, and an sdist that needs one should fail
# the build here rather than pull build tools into the image.
RUN pip install --no-cache-dir --only-binary=:all: -r requirements.txt
COPY service/ service/
COPY handlers/ handlers/
COPY metrics/ metrics/
COPY realtime_client/ realtime_client/
COPY --from=web /web/dist/ web/dist/
# The root filesystem is read-only in Kubernetes: everything written goes under /tmp.
ENV LOG_FORMAT=json \
    WORKERS=0 \
    PORT=5001 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    WEB_DIR=/app/web/dist \
    DATA_DIR=/tmp/data
USER 10001:10001
EXPOSE 5001
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '5001'), timeout=2)"]
ENTRYPOINT ["python", "-m", "service"]
