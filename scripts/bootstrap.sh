#!/usr/bin/env bash
# Create the virtualenv and install Colombe with its test tools. On a fresh Debian 12 machine this
# also installs the Debian packages Python needs to build a venv.
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root (or sudo) to run: $*" >&2; exit 1; fi; }

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Colombe needs Python >= 3.11 ($python is $("$python" --version 2>&1 || echo missing))." >&2
  as_root apt-get update -q
  as_root apt-get install -y -q python3 python3-venv python3-dev
  python=python3
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    as_root apt-get update -q
    as_root apt-get install -y -q python3-venv python3-dev
    "$python" -m venv "$venv"
  fi
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[test]'
echo "installed Colombe in $venv"
