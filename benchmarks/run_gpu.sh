#!/usr/bin/env bash
# One GPU session: build the extension for the card, run the CUDA tests, then the GPU benchmark.
# Logs go to $OUT (default ./gpu_logs). Usage: bash benchmarks/run_gpu.sh [--model]
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
start=$(date +%s)
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 DCLS_CONVERT_CUDA=1 \
  python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
timeout 240 python3 -m pytest tests/test_cuda.py tests/test_emulated_cuda.py -q -x -n 4 -p no:cacheprovider \
  > "$OUT/test_cuda.log" 2>&1
echo "tests rc=$? after $(( $(date +%s) - start )) s"; tail -5 "$OUT/test_cuda.log"
timeout 300 python3 benchmarks/bench_gpu.py "$@" > "$OUT/bench_gpu.log" 2>&1
echo "bench rc=$? after $(( $(date +%s) - start )) s"; cat "$OUT/bench_gpu.log"
