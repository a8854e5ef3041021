#!/usr/bin/env bash
# One device call (about 550 s, carry .whl): the GPU tests, with llama.cpp built in the background, then the 4B shape end to end:
# fastft train (favorite-color, defaults) and fastft export --gguf q4_k_m --gguf q8_0 (stage timeline,
# the direct path, retention and KL of both quants with the gate's cost). Results in $OUT. Usage: bash bench/gpu_check.sh
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "from bench.common import ensure_llama_cpp_source as e; e()"
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
( python3 -c "from fastft.export.llamacpp import ensure_llama_cpp, ensure_scorer; ensure_llama_cpp(); ensure_scorer()" > $OUT/llama-build.txt 2>&1; el "llama.cpp built" >> $OUT/llama-build.txt ) &
BUILD=$!
el "gpu tests"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_autobatch.py --durations=12 2>&1 | tee $OUT/gpu-tests.txt | tail -22
el "model"; python3 bench/make_model.py --shape 4b --out-dir /tmp/m > $OUT/make-model.txt 2>&1; el "model done"
wait $BUILD; cat $OUT/llama-build.txt | tail -2
mkdir -p /tmp/w && cd /tmp/w
M=/tmp/m/Qwen3-4B-shape-Instruct-2507
el "train"; S=$(date +%s)
timeout $(( 520 - ($(date +%s) - T0) )) python3 -m fastft.cli train $OLDPWD/examples/favorite_color.jsonl --model $M --name fav > $OUT/train.txt 2>&1; echo "train rc=$? wall $(( $(date +%s) - S )) s" | tee -a $OUT/train.txt
tail -22 $OUT/train.txt; cp runs/fav/fastft.json $OUT/ 2>/dev/null; cp runs/fav/train.log $OUT/ 2>/dev/null
el "export"; S=$(date +%s)
timeout $(( 545 - ($(date +%s) - T0) )) python3 -m fastft.cli export runs/fav --gguf q4_k_m --gguf q8_0 > $OUT/export.txt 2>&1; echo "export rc=$? wall $(( $(date +%s) - S )) s" | tee -a $OUT/export.txt
tail -30 $OUT/export.txt; cp exports/fav/fastft-export.json $OUT/ 2>/dev/null; cp runs/fav/export.log $OUT/ 2>/dev/null
el "end"
