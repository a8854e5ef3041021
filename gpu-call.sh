#!/usr/bin/env bash
# One device call: GPU tests, then the time-to-first-chat bench (favorite, fastft, cold).
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "from bench.common import ensure_llama_cpp_source as e; e()"
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_autobatch.py --durations=12 2>&1 | tee $OUT/gpu-tests.txt | tail -25
LEFT=$(( 575 - ($(date +%s) - T0) ))
echo "bench with $LEFT s left"
timeout $LEFT python3 bench/ttfc.py --shape 4b --only fastft --scenarios favorite --runs-per 2 --work /tmp/ttfc-work --out $OUT --deadline-s $((LEFT - 10)) --quiet 2>&1 | tail -40
ls /tmp/ttfc-work/runs/*/* 2>/dev/null | head; find /tmp/ttfc-work -name fastft-export.json -exec cp {} $OUT/ \; ; find /tmp/ttfc-work -name fastft.json -path "*ttfc*" -exec cp {} $OUT/ \;
du -sh ~/.cache/fastft/compiled/* 2>/dev/null
