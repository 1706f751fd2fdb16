# syntax=docker/dockerfile:1
# Fanline edge node image. Build: docker build -t REGISTRY/fanline:TAG .  (see docs/deploy.md)
#
# Two stages: the builder installs the package into a venv; the final stage copies
# only that venv, so no pip, build tools or source tree ship in the image.
# Both stages use the same base so the venv's interpreter symlink stays valid.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fanline
WORKDIR /src
# Metadata first, so the dependency layer is cached until pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY node ./node
COPY broker_adapters ./broker_adapters
# A non-editable install; pip compiles the .pyc files here, at build time,
# because the final root filesystem is read-only.
RUN /opt/fanline/bin/pip install . \
 && /opt/fanline/bin/python -m compileall -q /opt/fanline

FROM ${PYTHON_IMAGE}
# No .pyc writes at run time (read-only root), logs straight to stdout, and
# every temporary file under /tmp, which the chart mounts as an emptyDir.
ENV PATH=/opt/fanline/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    FANLINE_HOST=0.0.0.0
# A fixed numeric UID/GID: Kubernetes can only enforce runAsNonRoot on a numeric USER.
RUN groupadd --system --gid 10001 fanline \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin fanline
COPY --from=builder /opt/fanline /opt/fanline
USER 10001:10001
# 8000: clients (/ws, /sse, /api/publish). 9000: internal (/healthz, /readyz, /metrics, /drain).
EXPOSE 8000 9000
# For plain Docker only; Kubernetes ignores HEALTHCHECK and uses the chart's probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FANLINE_INTERNAL_PORT', '9000'), timeout=2)"
ENTRYPOINT ["fanline", "node"]
