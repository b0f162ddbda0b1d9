#!/usr/bin/env bash
# A/B of tap-engine kernel versions in one GPU session: builds this tree's extension once per kernels/ version
# and times the engine's layers (bench_gpu.py --layers-only --taps-only) for each, interleaving nothing else,
# then prints one summary. Compare versions only within one run (the same card and mode: the taps-only timings
# read lower than the full benchmark's for the same build).
#
#   git archive REV kernels | tar -x -C .variants/REV     # once per version, here (.variants/ is git-ignored)
#   bash benchmarks/compare_kernels.sh .variants/REV1/kernels .variants/REV2/kernels kernels   # on the device
#
# Writes $OUT/compare.log and one JSON per version (name from its position: v1, v2, ...); the device tool brings
# back at most 8 files, so at most 7 versions.
set -u
OUT=${OUT:-compare_logs}
mkdir -p "$OUT"
root=$PWD
log="$OUT/compare.log"
: > "$log"
i=0
for k in "$@"; do
  i=$((i + 1))
  d=/tmp/kernels_v$i
  rm -rf "$d" && mkdir -p "$d"
  cp -r setup.py pyproject.toml README.md dcls_convert benchmarks "$d"/
  rm -f "$d"/dcls_convert/_C*.so
  cp -r "$root/$k" "$d/kernels"
  (cd "$d" && TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=4 DCLS_CONVERT_CUDA=1 \
     python3 setup.py build_ext --inplace > "$d/build.log" 2>&1 || { echo "v$i ($k): build failed"; tail -20 "$d/build.log"; }) >> "$log" &
done
wait
i=0
for k in "$@"; do
  i=$((i + 1))
  d=/tmp/kernels_v$i
  echo "== v$i: $k" >> "$log"
  (cd "$d" && PYTHONPATH=$d${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 timeout 120 python3 benchmarks/bench_gpu.py \
     --quick --layers-only --taps-only --json "$root/$OUT/v$i.json" 2>&1 | grep -v "^  measured") >> "$log"
done
python3 - "$OUT" "$@" >> "$log" <<'PY'
import json, os, sys
out, versions = sys.argv[1], sys.argv[2:]
print("\nsum over stage shapes and dtypes, ms (fwd | fwd+bwd | wgrad):")
for i, k in enumerate(versions, 1):
    p = os.path.join(out, f"v{i}.json")
    if os.path.exists(p):
        rows = json.load(open(p))
        print(f"  v{i} {k}: " + " | ".join(f"{sum(r[c] for r in rows):.3f}" for c in ("fwd", "fwd+bwd", "wgrad")))
PY
cat "$log"
