#!/usr/bin/env bash
# Build the dimse-bridge image on a machine with no container registry (and no package
# index inside builds), with podman:
#   1. a Debian base image made by mmdebstrap from this machine's apt sources
#      (python3, python3-venv, ca-certificates), cached: the tarball under $CACHE_DIR, the
#      image as localhost/dimse-bridge-base:$SUITE; neither is rebuilt when present;
#   2. a wheelhouse, deploy/container/wheelhouse/, made on this host by `pip wheel .` with
#      $PYTHON (which must be the same Python minor version as the base's python3);
#   3. podman build --format docker --build-arg BASE=... --build-arg PIP_SOURCE=wheelhouse.
# Usage (as root, from anywhere): deploy/container/build-offline.sh [extra podman build args]
# Environment: IMAGE (default dimse-bridge:<version in pyproject.toml>), SUITE (bookworm),
# PYTHON (python3), CACHE_DIR (/var/tmp/dimse-bridge-build), PODMAN_FLAGS (global podman
# flags; default "--runtime runc --cgroup-manager=cgroupfs", what works on hosts where
# crun cannot set rlimits or cgroups; set it to "" where the defaults work).
# With a registry, none of this is needed: see the README (podman build / docker build).
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO_ROOT="$(pwd)"
log() { printf '==> %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
IMAGE="${IMAGE:-dimse-bridge:$VERSION}"
SUITE="${SUITE:-bookworm}"
PYTHON="${PYTHON:-python3}"
CACHE_DIR="${CACHE_DIR:-/var/tmp/dimse-bridge-build}"
read -r -a PODMAN_GLOBAL <<<"${PODMAN_FLAGS---runtime runc --cgroup-manager=cgroupfs}"
PODMAN=(podman "${PODMAN_GLOBAL[@]}")
BASE_IMAGE="localhost/dimse-bridge-base:$SUITE"
BASE_TAR="$CACHE_DIR/debian-base-$SUITE.tar"
WHEELHOUSE=deploy/container/wheelhouse
# Ulimits every build container gets: podman's defaults fail under runc here.
ULIMITS=(--ulimit nofile=1024:20000 --ulimit nproc=4096:4096)

# 1. The base image.
started="$(now)"
if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    if [ ! -s "$BASE_TAR" ]; then
        log "mmdebstrap $SUITE -> $BASE_TAR"
        mkdir -p "$CACHE_DIR"
        mmdebstrap --variant=minbase --format=tar --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$BASE_TAR.partial"
        mv "$BASE_TAR.partial" "$BASE_TAR"
    fi
    log "podman import $BASE_TAR $BASE_IMAGE"
    "${PODMAN[@]}" import "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi
log "base $BASE_IMAGE ready in $(since "$started") s"

# 2. The wheelhouse, for the base's Python.
# A named container, removed even if this script is interrupted (a killed `podman run`
# client leaves its container running).
probe="dimse-bridge-build-probe-$$"
trap '"${PODMAN[@]}" rm -f "$probe" >/dev/null 2>&1 || true' EXIT
base_python="$("${PODMAN[@]}" run --rm --name "$probe" --network=none "${ULIMITS[@]}" \
    "$BASE_IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
host_python="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$base_python" != "$host_python" ]; then
    log "the base has Python $base_python, $PYTHON is $host_python: the wheels would not fit;"
    log "set PYTHON to a Python $base_python interpreter (with pip)"
    exit 2
fi
started="$(now)"
mkdir -p "$WHEELHOUSE"
# The project's own wheel is rebuilt every time (same version, new code); the dependencies'
# wheels stay and are reused.
rm -f "$WHEELHOUSE"/dimse_bridge-*.whl
log "pip wheel . -> $WHEELHOUSE (Python $host_python)"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check -w "$WHEELHOUSE" "$REPO_ROOT"
log "wheelhouse ready in $(since "$started") s"

# 3. The image.
started="$(now)"
log "podman build $IMAGE"
# --layers=false: no intermediate images are kept (the context changes with every checkout,
# so they would rarely be reused, and repeated builds would pile them up); --network=none:
# nothing is fetched, the wheelhouse has it all.
"${PODMAN[@]}" build --format docker --layers=false --network=none "${ULIMITS[@]}" \
    -f deploy/container/Containerfile \
    --build-arg BASE="$BASE_IMAGE" --build-arg PIP_SOURCE=wheelhouse \
    --build-arg WHEELHOUSE="$WHEELHOUSE" \
    -t "$IMAGE" "$@" .
log "image $IMAGE built in $(since "$started") s"
