#!/usr/bin/env bash
# Set up fastft in ./.venv on a fresh machine (CPU or CUDA). Usage: bash install.sh [--relock]
#   FASTFT_VENV=DIR      install into DIR instead of ./.venv
#   FASTFT_TORCH="..."   another torch build, e.g. "torch==2.14.1 --index-url URL" (split into words)
#   --relock             into a NEW FASTFT_VENV: resolve without the lock, then rewrite constraints.txt
#
# Every step installs under constraints.txt (pip -c), the exact set of versions resolved once, so
# two installs a week apart agree (a plain resolve had moved torch 2.13 -> 2.14.1 unannounced).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${FASTFT_VENV:-.venv}
LOCK=$PWD/constraints.txt
RELOCK=0
[ "${1:-}" = --relock ] && RELOCK=1
if [ $RELOCK = 1 ] && [ -e "$VENV" ]; then
  echo "--relock resolves from scratch: give a new FASTFT_VENV (not $VENV)" >&2; exit 2
fi
step() { echo "• $*"; }   # one line per step: the big downloads take a while, in silence
step "python venv in $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
C=(-c "$LOCK")
if [ $RELOCK = 1 ]; then
  C=()
elif [ -n "${FASTFT_TORCH:-}" ]; then
  # Another torch build pins its own triton and CUDA libraries, and torchvision/torchao builds
  # follow torch's version: drop the lock's pins of those.
  grep -vE '^((torch|torchvision|torchao|triton)==|(nvidia|cuda)-)' "$LOCK" > "$VENV/constraints-own-torch.txt"
  C=(-c "$VENV/constraints-own-torch.txt")
fi
step "pip (the lock's version)"
pip install -q ${C[@]+"${C[@]}"} --upgrade pip

# torch: the lock's (2.14.1, PyPI's CUDA 13 build, whose CPU fallback also trains the tiny model;
# inside Unsloth 2026.10.9's torch<2.15 cap). --relock takes the newest under that cap.
step "torch and its CUDA libraries (about 3 GB, most of the install time)"
if [ -n "${FASTFT_TORCH:-}" ]; then
  pip install -q $FASTFT_TORCH   # unquoted on purpose: "torch==X --index-url URL" is several words
else
  pip install -q ${C[@]+"${C[@]}"} "torch<2.15"
fi

# Unsloth 2026.10.9 is installed in two steps: on some mirrors certifi>=2026.10.19, which it
# requires, is missing. 2026.10.7 brings the same dependency set (transformers 5.17, trl 1.15,
# datasets 4.8, peft, bitsandbytes, xformers, triton); 2026.10.9 then replaces it without
# touching dependencies, except json5, which only 2026.10.9 requires (installed below).
# torchvision comes with them, pinned by the lock to 0.29.1: the build that matches torch 2.14.1
# (an unmatched one, as with torch 2.13's CPU wheel, breaks transformers' imports with
# "operator torchvision::nms does not exist"; an FASTFT_TORCH build must bring its own).
step "unsloth 2026.10.9, transformers, trl, peft, bitsandbytes, datasets, xformers"
pip install -q ${C[@]+"${C[@]}"} unsloth==2026.10.7 unsloth_zoo==2026.10.7
pip install -q --no-deps unsloth==2026.10.9 unsloth_zoo==2026.10.9

# fastft itself, without re-resolving unsloth's requirements (the --no-deps step above).
step "fastft (editable) and what it uses: gguf, click, rich, pydantic, tomlkit, matplotlib, pytest, pytest-xdist"
pip install -q ${C[@]+"${C[@]}"} json5 gguf click rich pydantic tomlkit matplotlib pytest pytest-xdist hypothesis pexpect
pip install -q --no-deps -e .

if [ $RELOCK = 1 ]; then
  { echo "# The exact versions \`bash install.sh\` installs (it passes this file to pip with -c)."
    echo "# Regenerate (re-resolves everything): FASTFT_VENV=/tmp/relock bash install.sh --relock"
    echo "# then update README.md's version table (tests/test_lock.py checks that they agree)."
    echo "# unsloth and unsloth_zoo are not here: install.sh pins them itself, in two steps."
    pip freeze --all --exclude-editable | grep -vE '^unsloth(_zoo)?=='; } > "$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
  echo "wrote $LOCK"
fi
echo "fastft installed in $VENV (run $VENV/bin/fastft --help)"
