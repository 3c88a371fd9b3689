#!/usr/bin/env bash
# The one command that installs the test prerequisites and runs the whole suite:
#   system packages (Orthanc + DICOMweb plugin + dcmtk + GDCM's gdcmscu; podman, runc,
#   mmdebstrap for the container test; prometheus for promtool) when missing, a venv in
#   .venv with the package and its [test] extra, then ruff, mypy and pytest (arguments go
#   to pytest).
# Works from a clean Debian/Ubuntu checkout as root, or as a user with sudo.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO_ROOT="$(pwd)"
VENV="$REPO_ROOT/.venv"
PLUGIN_DEFAULT=/usr/share/orthanc/plugins/libOrthancDicomWeb.so

log() { printf '==> %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi

as_root() {
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        log "need root (or sudo) to run: $*"
        exit 1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "$@"
}

plugin_present() {
    [ -f "$PLUGIN_DEFAULT" ] && return 0
    dpkg -L orthanc-dicomweb 2>/dev/null | grep -q '\.so$'
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update
        apt_updated=1
    fi
    as_root apt-get install -y --no-install-recommends "$@"
}

# --- system packages ---------------------------------------------------------------------
# The tests start their own Orthanc on free ports (tests/integration/orthanc.py); the
# package's service is not used. A temporary policy-rc.d keeps the installation from
# starting it (where no policy-rc.d exists already).
if [ ! -x /usr/sbin/Orthanc ] || [ ! -x /usr/bin/findscu ] || [ ! -x /usr/bin/gdcmscu ] \
    || ! plugin_present; then
    log "installing orthanc, orthanc-dicomweb, dcmtk and libgdcm-tools (gdcmscu)"
    policy_made=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        policy_made=1
    fi
    status=0
    apt_install orthanc orthanc-dicomweb dcmtk libgdcm-tools || status=$?
    if [ "$policy_made" -eq 1 ]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
    if [ "$status" -ne 0 ]; then
        log "apt-get install failed (status $status)"
        exit "$status"
    fi
fi
for required in /usr/sbin/Orthanc /usr/bin/findscu /usr/bin/getscu /usr/bin/echoscu \
    /usr/bin/gdcmscu; do
    if [ ! -x "$required" ]; then
        log "missing after installation: $required"
        exit 1
    fi
done
if ! plugin_present; then
    log "missing after installation: the Orthanc DICOMweb plugin (.so of orthanc-dicomweb)"
    exit 1
fi

# The container test (tests/integration/test_container.py) builds and runs the image with
# rootful podman: runc (the default crun fails on some hosts: see the podman flags in
# deploy/container/build-offline.sh) and mmdebstrap for the Debian base
# (apt_install passes --no-install-recommends: podman recommends the rootless extras.)
# Only as root: run as another user, the test skips (rootless podman is not set up).
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
    || ! command -v mmdebstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        log "installing podman, runc and mmdebstrap"
        apt_install podman runc mmdebstrap
    else
        log "not root: podman, runc, mmdebstrap not installed; the container test will skip"
    fi
fi

# promtool (Debian's prometheus package) runs the unit tests of the alert rules
# (tests/deploy/test_alerts.py). The package's service is kept from starting, as Orthanc's.
if ! command -v promtool >/dev/null 2>&1; then
    log "installing prometheus (for promtool)"
    policy_made=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        policy_made=1
    fi
    status=0
    apt_install prometheus || status=$?
    if [ "$policy_made" -eq 1 ]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
    if [ "$status" -ne 0 ]; then
        log "apt-get install prometheus failed (status $status)"
        exit "$status"
    fi
fi

# The operator page test (tests/faults/test_trace.py) loads the page in Debian's headless
# Chromium; without it, that one test skips.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        log "installing chromium"
        apt_install chromium
    else
        log "not root: chromium not installed; the operator page test will skip"
    fi
fi

# --- Python venv -------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "$PYTHON is missing or older than 3.11; installing python3"
    apt_install python3
    PYTHON=python3
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        log "installing python3-venv"
        apt_install python3-venv
    fi
    log "creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
log "installing the package with its [test] extra into $VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -e '.[test]'

# --- checks and tests --------------------------------------------------------------------
log "ruff check bridge tests bench"
"$VENV/bin/ruff" check bridge tests bench
log "mypy"
"$VENV/bin/mypy"
log "pytest $*"
exec "$VENV/bin/python" -m pytest "$@"
