#!/usr/bin/env bash
# The project's set-up, shared by scripts/demo.sh and scripts/test-all.sh.
#
#   bash scripts/setup-venv.sh [EXTRA]   set up .venv (with pip extra EXTRA, e.g. test)
#   . scripts/setup-venv.sh              from another script: defines shmq_setup_venv
#
# shmq_setup_venv [EXTRA] makes sure this machine can build the extension,
# creates (or reuses) the virtual environment, and installs shmq into it in
# editable mode, so that `import shmq` and `pytest` work from the repository
# root. It never installs into, or upgrades, the interpreter it starts from.
#
# Environment:
#   PYTHON      the interpreter to build the venv from (default python3); 3.11+
#   SHMQ_VENV   where the venv lives (default .venv in the repository root)
#
# A missing C compiler, make, Python headers or venv/ensurepip is installed
# with apt-get (build-essential python3-dev python3-venv), through sudo when
# not root.
# Afterwards: $SHMQ_ROOT is the repository root and $SHMQ_PY the venv's python.

SHMQ_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHMQ_VENV=${SHMQ_VENV:-$SHMQ_ROOT/.venv}
SHMQ_PY=$SHMQ_VENV/bin/python

shmq_say() { echo "setup: $*" >&2; }
shmq_die() { echo "setup: error: $*" >&2; exit 1; }

# What this machine lacks to build shmq with interpreter $1 (and to make a
# venv from it, when $2 is "venv"), as words.
_shmq_missing() {
    local py=$1 missing=()
    command -v "${CC:-cc}" >/dev/null || missing+=("a C compiler (${CC:-cc})")
    command -v make >/dev/null || missing+=(make)
    "$py" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        missing+=("the Python headers (Python.h)")
    if [ "${2:-}" = venv ]; then
        "$py" -c 'import venv, ensurepip' 2>/dev/null || missing+=("venv/ensurepip")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        local IFS=,
        echo "${missing[*]}" | sed 's/,/, /g'
    fi
}

# Installs Debian packages as root, or through sudo (asking for a password
# only when there is a terminal to ask on).
_shmq_apt_install() {
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null ||
            shmq_die "this needs root to run: apt-get install -y $*; run it as root, or install those packages, then retry"
        if [ -t 0 ]; then sudo=(sudo); else sudo=(sudo -n); fi
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        shmq_die "could not run: ${sudo[*]} apt-get update; install $* yourself, then retry"
    # Versioned names (python3.12-dev) exist only where that Python is packaged.
    local known=() package
    for package in "$@"; do
        apt-cache show "$package" >/dev/null 2>&1 && known+=("$package")
    done
    shmq_say "installing with apt-get: ${known[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${known[@]}" >/dev/null ||
        shmq_die "could not run: ${sudo[*]} apt-get install -y ${known[*]}; install those packages yourself, then retry"
}

_shmq_ensure_build_tools() {
    local py=$1 missing
    missing=$(_shmq_missing "$py" "${2:-}")
    [ -z "$missing" ] && return 0
    command -v apt-get >/dev/null ||
        shmq_die "missing $missing, and this is not a Debian-like system (no apt-get): install them for $py, then retry"
    local packages=(build-essential python3-dev python3-venv)
    # A distribution interpreter other than the default python3 (say python3.12
    # next to 3.11) has its own versioned packages.
    local version
    version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if "$py" -c 'import sys; sys.exit(sys.base_prefix != "/usr")'; then
        packages+=("python$version-dev" "python$version-venv")
    fi
    shmq_say "missing $missing"
    _shmq_apt_install "${packages[@]}"
    missing=$(_shmq_missing "$py" "${2:-}")
    [ -z "$missing" ] ||
        shmq_die "still missing $missing for $py after apt-get; install them for that interpreter, or set PYTHON to another one"
}

# Prints the interpreter to build the venv from, after checking it.
_shmq_base_python() {
    local py=${PYTHON:-python3}
    command -v "$py" >/dev/null ||
        shmq_die "no '$py' found: install Python 3.11 or newer, or set PYTHON=/path/to/python3.11"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        shmq_die "$py is Python $("$py" -c 'import platform; print(platform.python_version())'); shmq needs 3.11 or newer: set PYTHON=/path/to/python3.11 (or newer)"
    command -v "$py"
}

# True when the venv runs, is 3.11+, has pip, and (if PYTHON is set) was made
# from that interpreter.
_shmq_venv_usable() {
    local base=$1
    [ -x "$SHMQ_PY" ] || return 1
    "$SHMQ_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11) or sys.prefix == sys.base_prefix)' 2>/dev/null || return 1
    "$SHMQ_PY" -m pip --version >/dev/null 2>&1 || return 1
    if [ -n "${PYTHON:-}" ]; then
        [ "$("$SHMQ_PY" -c 'import sys; print(sys.base_prefix)')" = "$("$base" -c 'import sys; print(sys.base_prefix)')" ] ||
            return 1
    fi
}

shmq_setup_venv() {
    local extra=${1:-} base
    base=$(_shmq_base_python) || exit 1
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    if _shmq_venv_usable "$base"; then
        _shmq_ensure_build_tools "$base"
        shmq_say "using the virtual environment $SHMQ_VENV"
    else
        _shmq_ensure_build_tools "$base" venv
        if [ -e "$SHMQ_VENV" ]; then
            shmq_say "recreating $SHMQ_VENV (it does not work, or was made from another interpreter than $base)"
            rm -rf "$SHMQ_VENV"
        fi
        shmq_say "creating the virtual environment $SHMQ_VENV from $base ($("$base" -c 'import platform; print(platform.python_version())'))"
        "$base" -m venv "$SHMQ_VENV" || shmq_die "$base -m venv $SHMQ_VENV failed"
    fi
    # The build backend goes into the venv so that every later build, the
    # sanitizer build included, runs without an isolated download.
    "$SHMQ_PY" -m pip install -q "setuptools>=77" || shmq_die "could not install setuptools into $SHMQ_VENV"
    local target=.
    [ -n "$extra" ] && target=".[$extra]"
    shmq_say "installing shmq into $SHMQ_VENV (pip install -e '$target')"
    (cd "$SHMQ_ROOT" && "$SHMQ_PY" -m pip install -q --no-build-isolation -e "$target") ||
        shmq_die "pip install -e '$target' failed (see above)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    shmq_setup_venv "${1:-test}"
    shmq_say "done: activate it with '. ${SHMQ_VENV#"$PWD"/}/bin/activate'"
fi
