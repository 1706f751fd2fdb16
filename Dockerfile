# syntax=docker/dockerfile:1
# Fanline edge node image. Build: docker build -t REGISTRY/fanline:TAG .  (see docs/deploy.md)
#
# Two stages: the builder installs the locked dependencies and the package into a venv
# that has no pip; the final stage copies only that venv onto a base from which pip,
# setuptools and wheel are removed, so no installer ships in the image.
#
# The base is pinned by digest, and both stages use the same one so the venv's
# interpreter symlink stays valid. It must be the multi-arch index digest of the tag;
# docs/deploy.md#the-base-image-digest says how to check and update it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS builder
# EXTRAS=kubernetes also installs the official Kubernetes client, for the in-cluster
# rebalancer (`fanline cluster`); the node itself does not need it.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Locks first: the dependency layers stay cached until a lock file changes.
COPY docker/*.lock docker/
# A throwaway venv holds the build tools (setuptools, hash-checked).
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r docker/build-requirements.lock
# The image's venv never gets pip: the build venv's pip installs into it. Every
# dependency is pinned and hash-checked (docker/lock.sh regenerates the locks),
# every broker client included (fanline[all]): the chart serves any broker URL.
RUN python -m venv --without-pip /opt/fanline \
 && /opt/build/bin/pip --python /opt/fanline/bin/python install --require-hashes --no-deps \
    -r "docker/requirements${EXTRAS:+-$EXTRAS}.lock"
COPY pyproject.toml README.md LICENSE ./
COPY node ./node
COPY broker_adapters ./broker_adapters
# The package itself, built here from the source tree with the locked setuptools;
# bytecode is compiled at build time because the final root filesystem is read-only.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/build/bin/pip --python /opt/fanline/bin/python install --no-deps /tmp/wheels/fanline-*.whl \
 && /opt/fanline/bin/python -m compileall -q /opt/fanline

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="fanline" \
      org.opencontainers.image.description="Fanline real-time edge node: WebSocket and SSE with resumable streams over Redis, NATS or Kafka." \
      org.opencontainers.image.source="https://github.com/fanline/fanline" \
      org.opencontainers.image.url="https://github.com/fanline/fanline" \
      org.opencontainers.image.documentation="https://github.com/fanline/fanline/blob/main/docs/deploy.md" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# No .pyc writes at run time (read-only root), logs straight to stdout, and
# every temporary file under /tmp, which the chart mounts as an emptyDir.
ENV PATH=/opt/fanline/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    FANLINE_HOST=0.0.0.0
# No installer in the image: the base's pip, setuptools and wheel (and the copy of
# pip that ensurepip bundles) go. A fixed numeric UID/GID: Kubernetes can only
# enforce runAsNonRoot on a numeric USER.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && rm -rf /usr/local/lib/python3.11/ensurepip /usr/local/bin/pip* \
 && groupadd --system --gid 10001 fanline \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin fanline
COPY --from=builder /opt/fanline /opt/fanline
USER 10001:10001
# 8000: clients (/ws, /sse, /api/publish). 9000: internal (/healthz, /readyz, /metrics, /drain, /shed, /status).
EXPOSE 8000 9000
# For plain Docker only; Kubernetes ignores HEALTHCHECK and uses the chart's probes.
# Exec form: no shell in between, so the check's exit status is Python's own.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FANLINE_INTERNAL_PORT', '9000'), timeout=2)"]
ENTRYPOINT ["fanline", "node"]
