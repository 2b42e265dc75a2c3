#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one go: build with the CUDA kernels, the test suite
# on the GPU, and the GPU benchmark. Logs and JSON go to $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
MSVAE_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -q . 2>&1 | tail -5 | tee "$OUT/build.log"
python3 -c "import msvae.ops as o; print(o.available_backends())" | tee -a "$OUT/build.log"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -x tests/test_gpu.py tests/test_mixture_log_density.py tests/test_triton_kernels.py 2>&1 | tail -30 | tee "$OUT/tests.log"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  python3 bench/bench_tc.py --device cuda --out "$OUT/tc_cuda.json" ${BENCH_ARGS:-} 2>&1 | tail -60 | tee "$OUT/bench.log"
fi
