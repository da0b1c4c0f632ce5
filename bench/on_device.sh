#!/usr/bin/env bash
# The GPU machine's side of bench/cell_bench.py (docs/BENCHMARKS.md): that machine has torch, transformers and peft but
# no vLLM or Dagster and no internet, so both travel (vLLM as bench/vllm_bundle's two parts, Dagster and polars as
# wheels in .whl/dg), one device call each, and the measurement runs detached so that it can outlast a call.
# Here first: `bash bench/vllm_bundle/build.sh` (the two parts, about 6 minutes on 2 cores) and the Dagster wheels,
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     $(for n in 17 24 27 28 31 34; do echo --platform manylinux_2_${n}_x86_64; done) --platform manylinux2014_x86_64 \
#     -d .whl/dg -r bench/dg_wheels.txt
# (58 MB: under a call's 64 MiB). Then one device call per part, and a third that carries .whl/dg and starts.
#   bash bench/on_device.sh stash PART    # each transfer call: keep the carried part (a carried path is replaced)
#   bash bench/on_device.sh start ARGS    # install both, then `python bench/cell_bench.py ARGS` in the background
#   bash bench/on_device.sh bg SCRIPT ARGS   # install both, then `python SCRIPT --out RESULTS ARGS` in the background
#   bash bench/on_device.sh poll          # progress, and its results and logs so far into $OUT
#   bash bench/on_device.sh poll report --cells C   # also the runs that have ended, read from the instance
set -euo pipefail
run="${TMPDIR:-/tmp}/mt-bench"   # models, scratch, the Dagster instance and the results: outside the copied tree
env_() {
  export PYTHONPATH="$PWD:$PWD/.vbundle/site:$run/dgsite" VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 \
         MT_MODELS="$run/models" MT_SCRATCH="$run/scratch" DAGSTER_HOME="$run/dagster"
}
install_() {
  [ -d .vbundle/site ] || bash bench/vllm_install.sh .vbundle/stash .vbundle/site
  mkdir -p "$run/dagster" "$run/results"
  env_
  if [ -d .whl/pyd ]; then  # pydantic alone, for a bench without vLLM's bundle (compile_probe, lora_fuse_probe)
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$run/dgsite" .whl/pyd/*.whl
  fi
  if [ -d .whl/dg ]; then   # a bench outside Dagster (gen_bench, held_engine_check) needs only vLLM
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$run/dgsite" .whl/dg/*.whl
    python3 -c "import dagster, dagster_pipes, polars, definitions; print('imports ok: dagster', dagster.__version__)"
  fi
  python3 -c "import vllm; print('imports ok: vllm', vllm.__version__)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
}
case "${1:-}" in
  stash) mkdir -p .vbundle/stash && mv "$2" .vbundle/stash/ ;;
  start|bg)
    [ "$1" = start ] && script=bench/cell_bench.py || { script="$2"; shift; }
    shift
    install_
    setsid nohup python3 "$script" --out "$run/results" "$@" > "$run/results/bench.log" 2>&1 < /dev/null &
    echo "started $script: $run/results/bench.log" ;;
  poll)
    env_
    tail -n 4 "$run/results/bench.log" | cut -c1-300
    grep -h -E "done in|engine started|pushed|tok/s" "$run/dagster"/workers/*.log 2>/dev/null | tail -n 6 | cut -c1-200 || true
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
    cp "$run"/results/* "$OUT"/ 2>/dev/null || true   # every poll: what a lease that ends mid-run still keeps
    for f in "$run"/dagster/workers/*.log; do [ -f "$f" ] && cp "$f" "$OUT/worker_$(basename "$f")"; done
    if ! pgrep -f "bench/[a-z_]*bench.py" > /dev/null; then
      echo "ENDED"
    elif [ "${2:-}" = report ]; then   # the runs that have ended so far, read from the instance while it goes on
      python3 bench/cell_bench.py --report --compute worker --out "$OUT" "${@:3}" | tail -n 30
    fi ;;
  *) sed -n 2,7p "$0"; exit 2 ;;
esac
