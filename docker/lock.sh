#!/bin/sh
# Regenerate the image's lock files from pyproject.toml, with the hash of every
# distribution file on PyPI (so both amd64 and arm64 wheels are covered):
#
#   sh docker/lock.sh            # after changing dependencies in pyproject.toml
#   sh docker/lock.sh --upgrade  # to move every pin to the newest release
#
# Resolved for Python 3.11 on Linux, the image's interpreter: run it with a 3.11
# interpreter (`PYTHON=python3.11 sh docker/lock.sh`). Local pip configuration
# (extra indexes, find-links) is ignored so the hashes are PyPI's.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the image runs Python 3.11"'
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$PYTHON" -m venv "$venv"
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT 2>/dev/null || true
"$venv/bin/pip" install --quiet pip-tools
compile() {
    "$venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
        --index-url https://pypi.org/simple --no-emit-index-url --no-emit-find-links "$@"
}
# The image carries every broker client (what fanline[all] installs): one image
# serves any broker URL.  The extras are named one by one because [all] refers
# to the package itself, which pip-compile would pin as a local path.
brokers="--extra redis --extra nats --extra kafka"
compile ${1:-} $brokers --output-file docker/requirements.lock pyproject.toml
compile ${1:-} $brokers --extra kubernetes --output-file docker/requirements-kubernetes.lock pyproject.toml
compile ${1:-} --output-file docker/build-requirements.lock docker/build-requirements.in
