#!/usr/bin/env bash
# One GPU session: build the extension for the card, run the CUDA tests, the GPU benchmark and (--profile) an
# Nsight Compute profile of the tap kernels. Logs go to $OUT (default ./gpu_logs).
# Usage: bash benchmarks/run_gpu.sh [--profile] [bench_gpu.py options]
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
profile=0
if [ "${1:-}" = "--profile" ]; then profile=1; shift; fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
start=$(date +%s)
# One device call may run 600 s: every step below gets what is left of BUDGET, in the order of what a session
# most needs (a killed step still leaves its log in $OUT, and later steps are skipped, not lost silently).
BUDGET=${BUDGET:-570}
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
# min(cap, left - reserve), at least 20 s
cap() { local l; l=$(( $(left) - $2 )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 20 ] && l=20; echo "$l"; }
ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}
# An extension built beforehand by benchmarks/prebuild_device.sh (carried as .prebuilt) is used where its stamp is
# what this machine computes for the sources, Python, torch and architectures here, and it loads; else the build.
prebuilt=0
if [ -f .prebuilt/stamp ] && [ "$(python3 benchmarks/build_stamp.py --arch "$ARCH" 2>&1)" = "$(cat .prebuilt/stamp)" ]; then
  cp .prebuilt/_C.*.so dcls_convert/ && python3 -c "import torch, dcls_convert._C" > "$OUT/build.log" 2>&1 && prebuilt=1 ||
    rm -f dcls_convert/_C.*.so
fi
if [ $prebuilt = 1 ]; then
  echo "build: prebuilt ($(cat .prebuilt/stamp)), $(( $(date +%s) - start )) s"
else
  [ -f .prebuilt/stamp ] && echo "prebuilt not used: $(cat .prebuilt/stamp) here $(python3 benchmarks/build_stamp.py --arch "$ARCH" 2>&1)"
  TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=16 DCLS_CONVERT_CUDA=1 \
    python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi
# Smoke run: the small-plane kernels (not yet run on a card when this was written) once at small shapes against the
# gather kernels; where that fails, each part again in a process of its own, to say which. A kernel that faults
# leaves its process's CUDA context unusable, so after a fault (exit 3; a timeout too) the benchmark runs with
# DCLS_CONVERT_CUDA_PLANE=none (its plane arms skipped, tuning without them) and the rest of the call still
# measures; wrong results alone (exit 2) are reported and the kernels still timed.
plane_bad=""
timeout 90 python3 benchmarks/sanitize_planes.py > "$OUT/smoke.log" 2>&1; smoke=$?
if [ $smoke != 0 ]; then
  for part in conv corr; do
    timeout 60 python3 benchmarks/sanitize_planes.py --part $part > "$OUT/smoke_$part.log" 2>&1; rc=$?
    [ $rc != 0 ] && [ $rc != 2 ] && plane_bad="$plane_bad $part"
    [ $rc != 0 ] && echo "smoke, $part alone: exit $rc"
  done
  [ $smoke != 2 ] && plane_bad=${plane_bad:- all}
fi
if [ -n "$plane_bad" ]; then
  echo "SMOKE FAULT (small-plane parts:$plane_bad): benchmark with DCLS_CONVERT_CUDA_PLANE=none"
elif [ $smoke = 2 ]; then
  echo "SMOKE WRONG RESULTS (small-plane kernels; timed all the same)"
else
  echo "smoke: small-plane kernels agree with the gather kernels, $(( $(date +%s) - start )) s"
fi
[ $smoke != 0 ] && { tail -6 "$OUT/smoke.log"; for part in conv corr; do
  [ -f "$OUT/smoke_$part.log" ] && tail -3 "$OUT/smoke_$part.log"; done; }
# TESTS_K: a pytest -k expression (a call short of time runs the tests of what it changed)
timeout "$(cap 150 ${TEST_RESERVE:-300})" python3 -m pytest tests/test_cuda.py -q -rfE -n 8 -p no:cacheprovider \
  ${TESTS_K:+-k "$TESTS_K"} > "$OUT/test_cuda.log" 2>&1
echo "tests rc=$? after $(( $(date +%s) - start )) s"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/test_cuda.log" | tail -30
DCLS_CONVERT_CUDA_PLANE=${plane_bad:+none} PYTHONUNBUFFERED=1 \
  timeout "$(cap ${BENCH_TIMEOUT:-400} ${PROFILE_RESERVE:-5})" python3 benchmarks/bench_gpu.py "$@" \
  > "$OUT/bench_gpu.log" 2>&1
echo "bench rc=$? after $(( $(date +%s) - start )) s"; cat "$OUT/bench_gpu.log"
# SANITIZE=1: compute-sanitizer's racecheck and memcheck over the small-plane kernels at small shapes (after the
# timings; needs a runtime that supports it: the Firecracker machines did, gVisor's refused the device)
if [ -n "${SANITIZE:-}" ]; then
  for tool in racecheck memcheck; do
    [ "$(left)" -lt 60 ] && { echo "sanitize skipped ($tool): $(left) s left"; continue; }
    timeout "$(cap 150 ${PROFILE_RESERVE:-5})" compute-sanitizer --tool $tool --print-limit 20 \
      python3 benchmarks/sanitize_planes.py > "$OUT/sanitize_$tool.log" 2>&1
    echo "sanitize $tool rc=$? after $(( $(date +%s) - start )) s"; tail -4 "$OUT/sanitize_$tool.log"
  done
fi
if [ $profile = 1 ]; then
  # after the timings (what the targets are read by), stall reasons with what is left: PROFILE_RESERVE seconds
  # are kept from the benchmark for them
  # PROFILES: ';' between profile_taps.py configurations; a profile runs only while PROFILE_MIN s are left
  IFS=';' read -ra cfgs <<< "${PROFILES:---stage 1 --dtype float32;--stage 1 --dtype bfloat16 --channels-last;--stage 4 --dtype float32}"
  for cfg in "${cfgs[@]}"; do
    [ "$(left)" -lt "${PROFILE_MIN:-300}" ] && { echo "profile skipped ($cfg): $(left) s left"; continue; }
    timeout 75 ncu --clock-control none --kernel-name regex:"tiled|build_tables|window_|plane_" --launch-skip 5 --launch-count 5 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section InstructionStats --section SourceCounters \
      --section MemoryWorkloadAnalysis_Tables python3 benchmarks/profile_taps.py $cfg \
      > "$OUT/ncu_$(echo $cfg | tr -d ' -').log" 2>&1
  done
  echo "profiles done after $(( $(date +%s) - start )) s"
fi
