#!/usr/bin/env bash
# Set up fastft in ./.venv on a fresh machine (CPU or CUDA). Usage: bash install.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip

# torch 2.13.0: inside Unsloth 2026.10.9's torch<2.15 cap; on this project's CPU machines it is
# a CPU wheel on local disk, on a Linux CUDA machine PyPI's CUDA build. FASTFT_TORCH overrides.
pip install -q "${FASTFT_TORCH:-torch==2.13.0}"

# Unsloth 2026.10.9 is installed in two steps: its own requirements pull torchvision, which
# pip resolves to a build that does not match torch 2.13 ("operator torchvision::nms does not
# exist" breaks transformers imports), and on some mirrors certifi>=2026.10.19 is missing.
# 2026.10.7 brings the same dependency set (transformers 5.17, trl 1.15, datasets 4.8, peft,
# bitsandbytes, xformers, triton); 2026.10.9 then replaces it without touching dependencies.
pip install -q unsloth==2026.10.7 unsloth_zoo==2026.10.7
pip install -q --no-deps unsloth==2026.10.9 unsloth_zoo==2026.10.9
pip uninstall -q -y torchvision 2>/dev/null || true   # unused by fastft; see above

# fastft itself, without re-resolving unsloth's requirements (which would bring torchvision back).
pip install -q gguf click rich pydantic matplotlib pytest hypothesis pexpect
pip install -q --no-deps -e .
echo "fastft installed in .venv (run .venv/bin/fastft --help)"
