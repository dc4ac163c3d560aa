#!/usr/bin/env bash
# The GPU benchmark, tests and a short training run, in one script that ends within 5 minutes
# (each part has its time limit; cells that do not fit are logged as skipped).
#
#   bash benchmarks/gpu.sh                   # results in $OUT (default: ./gpu-results)
#
# A GPU machine may have no network: the reference (fairchem-core 1.10.0) and the packages that
# so2nn and it import beyond torch, numpy, e3nn and torch-geometric come as wheels in .whl/ of the
# clone (fetched beforehand with `pip download`; see the performance page), installed with
# --no-deps into a private folder. Without them the benchmark measures so2nn alone.
# Everything is written as it is measured, so a run cut short still leaves its results.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"; export OUT
T0=$(date +%s)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${SITE:-/tmp/so2nn-site}" .whl/*.whl 2>&1 | tail -3
  export PYTHONPATH="${SITE:-/tmp/so2nn-site}:$PWD:$PWD/benchmarks/reference_shims${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD:$PWD/benchmarks/reference_shims${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/smi.txt"
echo "setup $(( $(date +%s) - T0 )) s"
BUDGET_S=${BUDGET_S:-150} timeout ${BENCH_TIMEOUT:-190} python3 benchmarks/gpu_bench.py 2>&1 | tee "$OUT/bench.log" | cut -c1-900
echo "bench done at $(( $(date +%s) - T0 )) s"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/models/test_cuda.py tests/models/test_compile.py -k "cuda or host" \
  2>&1 | tail -5 | tee "$OUT/tests.txt"
echo "tests done at $(( $(date +%s) - T0 )) s"
timeout ${TRAIN_TIMEOUT:-40} python3 examples/train_oc20.py --device cuda --amp bf16 --max-steps 200 --no-progress \
  --no-plot --out "$OUT/run" --cache-dir "$OUT/data" > "$OUT/train.txt" 2>&1; echo "train rc=$?"
tail -8 "$OUT/train.txt" | cut -c1-300
echo "all done at $(( $(date +%s) - T0 )) s"
