#!/usr/bin/env bash
# The GPU host's checks, as device calls of at most 10 minutes each (carry .whl). Each argument is
# one step, run in order until the call's time (GPU_CHECK_LIMIT_S, 570 s) is spent:
#   tests             the GPU tests (pytest -m gpu: training, auto-tune and its cache), 150 s at most
#   gputests          the GPU tests of the export's quantizing (tests/test_gpuquant.py,
#                     test_export_direct_quant.py, test_kquants_triton.py), of the gate's model
#                     built in the direct child (test_gate_model.py) and of Unsloth's import
#                     rewriting the SFT trainer alone (tests/test_gpu.py), with llama.cpp built;
#                     GPUTESTS_K=EXPR runs those that pytest's -k EXPR selects
#   kqspeed           bench/kquants_speed.py: seconds per 2^25 elements of q4_K and q6_K on the GPU,
#                     torch's ops against the Triton kernels, side by side, and whether the bytes agree
#   ttfc:ONLY         bench/ttfc.py --shape 4b --only ONLY (scenarios and/or recipes, comma-separated),
#                     e.g. ttfc:favorite,fastft; its --work /tmp/ttfc is kept while the host
#                     stays warm, so a later call reuses its model, llama.cpp and finished runs
#   profile           bench/import_profile.py: where fastft train's start-up import goes (importtime,
#                     cProfile), in fresh interpreters, twice
#   throughput:DIST   bench/run.py --shape 4b --steps 30 --dist DIST (longtail or fixed): classic,
#                     fastft 2x4, fastft, fastft under --vram-budget 8 (the big-data bars), in
#                     /tmp/ttfc (its model shared with ttfc), --reuse: a later call carries on,
#                     e.g. THROUGHPUT_ONLY=classic,fastft2x4,fastft then THROUGHPUT_ONLY=budget;
#                     THROUGHPUT_BASELINE=DIR adds the recipe `baseline`, fastft's defaults from the
#                     source in DIR (here: git archive REV fastft | tar -x -C .baseline, then carry
#                     .baseline beside .whl; add /.baseline/ to .git/info/exclude)
#   importgc          bench/import_profile.py --gc --runs 3: import unsloth as a notebook does it
#                     against fastft's import_unsloth() (collector off, objects frozen), side by side
#   readahead         bench/read_ahead.py on the 4B shape (built if need be, ~40 s): fastft train's
#                     load with the model out of the page cache, the read-ahead during the import
#                     off and on, alternately, twice each after a warm-up run (~4 min)
#   scorer            bench/scorer_threads.py on the Q4_K_M of ttfc's last finished fastft export:
#                     fastft-score (the gate and the check) on a request of SCORER_TOKENS (609,295:
#                     the long-tailed example whole, as the gate scored it before 2026-12-07's
#                     fourteenth session, and cut at the trained budget, as since) at
#                     SCORER_THREADS (16) threads; SCORER_HASHING=1 also beside a SHA-256 of the
#                     GGUF (2026-12-07: 4,8,16 alone, 16 fastest; 15 beside a hash: to run)
#   gateab            bench/export_paths.py on ttfc's last finished fastft run: fastft export
#                     --gguf q4_k_m with the gate's 16-bit side measured in the direct child (the
#                     product) and loaded beside it (gguf/gate-beside, as before 2026-12-07's
#                     fifteenth session), alternately, GATEAB_ROUNDS (3) rounds;
#                     GATEAB_CASES=gguf/direct,gguf/score-early,gguf/score-early-all instead times
#                     the gate's llama.cpp started after the child (the product) against started
#                     on the child's file while the child measures, on half or nearly all cores
#   pyc               whether the host's Python libraries have byte-code (on 2026-12-06 a fifth of
#                     the torch venv's modules had none, and .whl installs with --no-compile), so a
#                     process compiles their source, which pip's install does once. Times `import
#                     torch, transformers` before and after byte-compiling them into
#                     PYTHONPYCACHEPREFIX (as pip leaves a user's install), which later steps use
#   compile:SCENARIO  bench/compile_choice.py: fastft train --compile on, on, off on SCENARIO
#                     (favorite or longtail), sharing one set of compile caches
#   quants            fastft export of ttfc's last finished fastft run with q4_k_m and q8_0: both
#                     quants' retention and KL, and the gate's cost for two quants
#   kquants           seconds of fastft.export.kquants on the GPU per 2^25 random elements and type
#   gpuquant          fastft.export.gpuquant against llama-quantize on the 4B shape: fastft export of
#                     ttfc's last finished fastft run with bf16 (kept), q4_k_m and q8_0 (made on the
#                     GPU from it), then llama-quantize of that bf16 file into both types (timed),
#                     and cmp of each pair; then the export of q4_k_m and q8_0 alone (quantized in
#                     the direct child, no BF16 on disk) and cmp with the first; then
#                     tests/test_gpuquant.py and test_export_direct_quant.py -m gpu (the tiny model)
#   direct-profile    bench/direct_profile.py on ttfc's last finished fastft run: where the direct
#                     child's time goes (GGUF q4_k_m quantized in the child): with CUDA graphs,
#                     without them (as before 2026-12-06's sixth session), cmp of the two Q4_K_M
#                     files; then with graphs and more tensors computed ahead (16; the product's 8);
#                     DP_RUNS="1" runs the first alone; 4: without the merged tensors handed to
#                     the quantizer on the GPU (from their 16-bit bytes, as before 2026-12-07's
#                     thirteenth session) and cmp with the first: DP_RUNS="1 4 1 4"; 5: every
#                     thread on the default CUDA stream (as before the same session), cmp; 6:
#                     every merged tensor copied back to the CPU for the converter, no base
#                     tensor standing in (--copy-back, as before the fourteenth session), cmp
# e.g.  bash bench/gpu_check.sh tests ttfc:favorite,fastft     then
#       bash bench/gpu_check.sh ttfc:favorite,notebook quants   Results go to $OUT.
LIMIT=${GPU_CHECK_LIMIT_S:-570}
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }; left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"; W=/tmp/ttfc; REPO=$PWD
# Installed once per host and set of wheels: reinstalling rewrites every file, and the byte-code
# the pyc step made for them no longer matches, so a later call's first process compiled them
STAMP=$(cd .whl && sha1sum *.whl | sha1sum | cut -c1-40)
if [ "$(cat /tmp/site/.fastft-wheels 2>/dev/null)" != "$STAMP" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  echo "$STAMP" > /tmp/site/.fastft-wheels
fi
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# An earlier call's pyc step on this warm host: its byte-code serves every later call, named or
# not (a later call that left pyc out timed fastft's processes compiling the libraries' source:
# 118 s against 101 s end to end, 2026-12-07)
[ -d /tmp/pycache ] && export PYTHONPYCACHEPREFIX=/tmp/pycache
python3 -c "from bench.common import ensure_llama_cpp_source as e; e()"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# llama.cpp's tools and fastft-score: built once per host (a no-op when built), beside the tests
( python3 -c "from bench.common import llama_cpp_root as r; print(r('$W/fastft-cache'))" \
  > "$OUT/llama-build.txt" 2>&1; el "llama.cpp ready" >> "$OUT/llama-build.txt" ) &
BUILD=$!
for step in "$@"; do
  el "step $step ($(left) s left)"
  case $step in
    tests)
      timeout $(( $(left) < 150 ? $(left) : 150 )) python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/test_gpu.py tests/test_autobatch.py --durations=8 > "$OUT/gpu-tests.txt" 2>&1
      echo "tests rc=$?"; tail -15 "$OUT/gpu-tests.txt" ;;
    gputests)
      wait $BUILD
      timeout $(( $(left) - 5 )) python3 -m pytest -m gpu -q -s -p no:cacheprovider --durations=6 \
        ${GPUTESTS_K:+-k "$GPUTESTS_K"} tests/test_gpu.py::test_unsloth_rewrites_the_same_sft_trainer_when_told_to_rewrite_it_alone \
        tests/test_gpuquant.py tests/test_export_direct_quant.py tests/test_gate_model.py \
        $(ls tests/test_kquants_triton.py 2>/dev/null) \
        > "$OUT/gpu-tests-export.txt" 2>&1
      echo "gputests rc=$?"; grep -E "import [0-9.]+ s|passed|failed|Error" "$OUT/gpu-tests-export.txt" | tail -12 ;;
    kqspeed)
      timeout $(( $(left) - 5 )) python3 bench/kquants_speed.py 2>&1 | grep -v Warn | tee "$OUT/kquants-speed.txt" | tail -12 ;;
    ttfc:*)
      wait $BUILD; tail -1 "$OUT/llama-build.txt"
      python3 bench/ttfc.py --shape 4b --work $W --out "$OUT" --quiet --only "${step#ttfc:}" --runs-per ${RUNS_PER:-2} \
        --deadline-s $(( $(left) - 10 )) 2>&1 | tail -40
      # per-step times and logs of the fastft runs, for where the time goes: one archive, as a
      # device call brings back at most 8 files; with every file each recipe's compile caches
      # hold (write time, bytes, path: Triton names each kernel's folder's files after it), for
      # what a cold run compiles and when
      find $W/caches -type f -printf '%T@ %s %P\n' 2>/dev/null | sort -n > $W/runs/caches.txt
      ( cd $W/runs && tar czf "$OUT/fastft-runs.tgz" --ignore-failed-read */runs/ttfc/{metrics.jsonl,train.log,export.log,fastft.json} \
          */export/{*.log,fastft-export.json} caches.txt 2>/dev/null ) ;;
    pyc)
      if [ -d /tmp/pycache ]; then export PYTHONPYCACHEPREFIX=/tmp/pycache; echo "pyc: done on this host"; continue; fi
      SITE=$(python3 -c "import importlib.util as u, os; print(os.path.dirname(os.path.dirname(u.find_spec('torch').origin)))")
      { echo "torch's site-packages: $SITE"; [ -w "$SITE" ] && echo writable || echo read-only
        echo "  .py $(find "$SITE" -name '*.py' | wc -l), .pyc $(find "$SITE" -name '*.pyc' | wc -l)"
        echo "/tmp/site: .py $(find /tmp/site -name '*.py' | wc -l), .pyc $(find /tmp/site -name '*.pyc' | wc -l)"
        for i in 1 2; do S=$(date +%s%N); python3 -c "import torch, transformers"
          echo "import torch, transformers: $(( ($(date +%s%N) - S) / 1000000 )) ms"; done
        S=$(date +%s%N); PYTHONPYCACHEPREFIX=/tmp/pycache python3 -m compileall -q -j 16 "$SITE" /tmp/site > /dev/null 2>&1; rc=$?
        echo "compileall into /tmp/pycache: $(( ($(date +%s%N) - S) / 1000000 )) ms, rc $rc"
        for i in 1 2; do S=$(date +%s%N); PYTHONPYCACHEPREFIX=/tmp/pycache python3 -c "import torch, transformers"
          echo "with the byte-code: import torch, transformers: $(( ($(date +%s%N) - S) / 1000000 )) ms"; done
      } > "$OUT/pyc.txt" 2>&1
      cat "$OUT/pyc.txt"; export PYTHONPYCACHEPREFIX=/tmp/pycache ;;
    compile:*)
      timeout $(( $(left) - 5 )) python3 bench/compile_choice.py --shape 4b --work $W --out "$OUT" \
        --scenario "${step#compile:}" --runs "${COMPILE_RUNS:-on,on,off}" --quiet 2>&1 | tail -12 ;;
    profile)
      timeout $(( $(left) - 5 )) python3 bench/import_profile.py --out "$OUT/profile" > "$OUT/import-profile.txt" 2>&1
      echo "profile rc=$?"; grep -A12 "^== run" "$OUT/import-profile.txt" | head -40 ;;
    throughput:*)
      python3 bench/run.py --shape 4b --steps 30 --dist "${step#throughput:}" --work "$W" \
        --out "$OUT" --quiet --reuse --deadline-s $(( $(left) - 10 )) ${THROUGHPUT_ONLY:+--only $THROUGHPUT_ONLY} \
        ${THROUGHPUT_BASELINE:+--baseline $THROUGHPUT_BASELINE} \
        2>&1 | tail -25 ;;
    importgc)
      timeout $(( $(left) - 5 )) python3 bench/import_profile.py --gc --runs 3 2>&1 | grep -v Warn \
        | tee "$OUT/import-gc.txt" | tail -4 ;;
    readahead)
      M=$(python3 bench/make_model.py --shape 4b --out-dir $W/models 2>/dev/null | tail -1)
      timeout $(( $(left) - 5 )) python3 bench/read_ahead.py --model "$M" --data examples/favorite_color.jsonl \
        --work /tmp/read-ahead --runs 2 --out "$OUT/read-ahead.json" 2>&1 | grep "\[bench" ;;
    gateab)
      wait $BUILD
      run=$(ls -td $W/runs/*-fastft-*/runs/ttfc 2>/dev/null | head -1)
      [ -z "$run" ] && { echo "gateab: no finished fastft run in $W"; continue; }
      timeout $(( $(left) - 5 )) python3 bench/export_paths.py --run "$run" --work $W \
        --cases ${GATEAB_CASES:-gguf/direct,gguf/gate-beside} --rounds ${GATEAB_ROUNDS:-3} --out "$OUT/gateab" 2>&1 \
        | grep -v Warning | tail -20 ;;
    scorer)
      wait $BUILD
      gguf=$(ls -t $W/runs/*-fastft-*/export/*.Q4_K_M.gguf 2>/dev/null | head -1)
      [ -z "$gguf" ] && { echo "scorer: no finished fastft export in $W"; continue; }
      timeout $(( $(left) - 5 )) python3 bench/scorer_threads.py "$gguf" --out "$OUT/scorer-threads.json" \
        --threads ${SCORER_THREADS:-16} --tokens ${SCORER_TOKENS:-609,295} ${SCORER_HASHING:+--hashing} \
        2>&1 | grep "\[bench" ;;
    quants)
      wait $BUILD
      run=$(ls -td $W/runs/*-fastft-*/runs/ttfc 2>/dev/null | head -1)
      [ -z "$run" ] && { echo "quants: no finished fastft run in $W"; continue; }
      S=$(date +%s)
      UNSLOTH_LLAMA_CPP_PATH=$(python3 -c "from bench.common import llama_cpp_root as r; print(r('$W/fastft-cache'))" | tail -1) timeout $(( $(left) - 5 )) \
        python3 -m fastft.cli export "$run" --gguf q4_k_m --gguf q8_0 --min-retention 0 \
        --out /tmp/quants --force > "$OUT/quants.txt" 2>&1
      echo "quants rc=$? wall $(( $(date +%s) - S )) s"; tail -25 "$OUT/quants.txt"
      cp /tmp/quants/fastft-export.json "$OUT/quants-export.json" 2>/dev/null ;;
    kquants)
      python3 - <<'PY' 2>&1 | tee "$OUT/kquants.txt"
import time, torch
from fastft.export import kquants
x = torch.randn(1 << 25, device="cuda") * 0.02
for kind in ("q8_0", "q4_K", "q6_K"):
    for rep in range(3):
        torch.cuda.synchronize(); t = time.perf_counter()
        kquants.quantize(x, kind); torch.cuda.synchronize()
        print(kind, rep, f"{time.perf_counter() - t:.3f} s", f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
PY
      ;;
    gpuquant)
      wait $BUILD
      run=$(ls -td $W/runs/*-fastft-*/runs/ttfc 2>/dev/null | head -1)
      [ -z "$run" ] && { echo "gpuquant: no finished fastft run in $W"; continue; }
      LLAMA=$(python3 -c "from bench.common import llama_cpp_root as r; print(r('$W/fastft-cache'))" | tail -1)
      { S=$(date +%s)
        UNSLOTH_LLAMA_CPP_PATH=$LLAMA timeout $(( $(left) - 120 )) python3 -m fastft.cli export "$run" \
          --gguf bf16 --gguf q4_k_m --gguf q8_0 --min-retention 0 --out /tmp/gq --force --no-check
        echo "export rc=$? wall $(( $(date +%s) - S )) s"
        grep -A3 quantized_by /tmp/gq/fastft-export.json; grep '"quantize_s"' /tmp/gq/fastft-export.json
        mkdir -p /tmp/gq-ref
        for q in Q4_K_M Q8_0; do S=$(date +%s%N)
          $LLAMA/llama-quantize /tmp/gq/ttfc.BF16.gguf /tmp/gq-ref/ttfc.$q.gguf $q > /tmp/gq-ref/$q.log 2>&1
          echo "llama-quantize $q: rc $? $(( ($(date +%s%N) - S) / 1000000 )) ms"
          cmp /tmp/gq/ttfc.$q.gguf /tmp/gq-ref/ttfc.$q.gguf && echo "$q: identical ($(stat -c %s /tmp/gq/ttfc.$q.gguf) bytes)"
        done
        rm -rf /tmp/gq-ref
        # the direct child quantizing from the merged tensors (no BF16 on disk): the same bytes
        S=$(date +%s)
        UNSLOTH_LLAMA_CPP_PATH=$LLAMA timeout $(( $(left) - 120 )) python3 -m fastft.cli export "$run" \
          --gguf q4_k_m --gguf q8_0 --min-retention 0 --out /tmp/gq-child --force --no-check
        echo "export in the child rc=$? wall $(( $(date +%s) - S )) s"
        grep -A3 quantized_by /tmp/gq-child/fastft-export.json; grep -E '"(convert|quantize|peak_disk_bytes)' /tmp/gq-child/fastft-export.json
        for q in Q4_K_M Q8_0; do cmp /tmp/gq/ttfc.$q.gguf /tmp/gq-child/ttfc.$q.gguf && echo "$q in the child: identical"; done
        rm -rf /tmp/gq /tmp/gq-child
        timeout $(( $(left) - 5 )) python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpuquant.py \
          tests/test_export_direct_quant.py 2>&1 | tail -3
      } > "$OUT/gpuquant.txt" 2>&1
      cat "$OUT/gpuquant.txt" | tail -30 ;;
    direct-profile)
      wait $BUILD
      run=$(ls -td $W/runs/*-fastft-*/runs/ttfc 2>/dev/null | head -1)
      [ -z "$run" ] && { echo "direct-profile: no finished fastft run in $W"; continue; }
      for i in ${DP_RUNS:-1 2 3}; do
        # each run but 1 and 3 keeps its files in $keep, compared with run 1's (/tmp/dp-graphs)
        keep= what= more=
        case $i in 1) more="--keep /tmp/dp-graphs";; 2) more=--no-graphs keep=/tmp/dp-eager what="graphs and eager";;
               3) more="--lookahead 16 --quant-lookahead 4";;
               4) more=--no-handoff keep=/tmp/dp-bytes what="handed over and from bytes";;
               5) more=--no-streams keep=/tmp/dp-default what="own streams and the default stream";;
               6) more=--copy-back keep=/tmp/dp-cb what="standing in and copied back";; esac
        [ -n "$keep" ] && more="$more --keep $keep"
        [ $i = 3 ] && [ $(left) -lt 60 ] && break
        UNSLOTH_LLAMA_CPP_PATH=$(python3 -c "from bench.common import llama_cpp_root as r; print(r('$W/fastft-cache'))" | tail -1) \
          timeout $(( $(left) - 5 )) python3 bench/direct_profile.py "$run" $more --out "$OUT/direct-profile-$i" 2>&1 \
          | grep -v Warning | tee -a "$OUT/direct-profile-$i.txt" | tail -25
        [ -n "$keep" ] && for f in /tmp/dp-graphs/*.gguf; do cmp "$f" "$keep/$(basename "$f")" \
          && echo "$(basename "$f"): $what identical ($(stat -c %s "$f") bytes)"; done \
          | tee -a "$OUT/direct-profile-$i.txt"
      done
      rm -rf /tmp/dp-graphs /tmp/dp-eager /tmp/dp-bytes /tmp/dp-default /tmp/dp-cb ;;
    *) echo "unknown step $step" ;;
  esac
done
el "end"
