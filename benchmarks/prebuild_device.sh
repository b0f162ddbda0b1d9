#!/usr/bin/env bash
# Builds the extension here, before a call of the GPU machine, for that machine's Python and torch, so that the
# call spends its short device time measuring instead of compiling (the build took 96 s of each H200 call in the
# ninth session). benchmarks/run_gpu.sh uses the result only where benchmarks/build_stamp.py computes, there, the
# line written here (same sources, Python, torch and architectures); otherwise it builds as before.
#
#   bash benchmarks/prebuild_device.sh        # then carry .prebuilt in the device call
#
# The device's python3 is 3.12 with torch 2.11.0+cu130 (/work/.library/device/KINDS.md); PB_PYTHON, PB_TORCH and
# TORCH_CUDA_ARCH_LIST change the target. The first run makes a virtual environment with that torch at PB_VENV
# (about 5 GB); a first build takes about 4 minutes on 2 cores, a rebuild only what changed. CPU kernels are built
# for the x86-64 baseline (DCLS_CONVERT_NATIVE=0): this machine's -march=native could use instructions the device's
# processor lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PB_PYTHON=${PB_PYTHON:-python3.12}
if ! "$PB_PYTHON" -c "" 2>/dev/null; then  # (a pyenv shim without that version selected: its own interpreter)
  PB_PYTHON=$(ls -d "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
  [ -n "$PB_PYTHON" ] || { echo "prebuild: no Python 3.12 here (set PB_PYTHON)"; exit 1; }
fi
PB_TORCH=${PB_TORCH:-2.11.0}
PB_VENV=${PB_VENV:-$HOME/.cache/dcls_convert/device-venv}
ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}
if ! "$PB_VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$PB_TORCH')" 2>/dev/null; then
  rm -rf "$PB_VENV"
  "$PB_PYTHON" -m venv "$PB_VENV"
  "$PB_VENV/bin/pip" install -q "torch==$PB_TORCH" "setuptools<82" wheel ninja numpy
fi
# The build tree: what a device call sends (tracked files and untracked ones git does not ignore), copied with
# their times over the last copy, whose build/ stays, so that a rebuild compiles only what changed.
src=${PB_TREE:-$(dirname "$PB_VENV")/device-tree}
mkdir -p "$src"
find "$src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$src"
start=$(date +%s)
(cd "$src" && DCLS_CONVERT_NATIVE=0 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=${MAX_JOBS:-2} DCLS_CONVERT_CUDA=1 \
  "$PB_VENV/bin/python" setup.py build_ext --inplace > build.log 2>&1) || { tail -40 "$src/build.log"; exit 1; }
so=$(ls "$src"/dcls_convert/_C.*.so)
# the extension must load in that torch (on this machine's CPU) before it is worth carrying
(cd "$src" && "$PB_VENV/bin/python" -c "import torch, dcls_convert._C; assert torch.ops.dcls_convert.taps_conv.default")
rm -rf .prebuilt
mkdir -p .prebuilt
strip --strip-debug -o ".prebuilt/$(basename "$so")" "$so"  # host debug info only: the kernels keep -lineinfo
(cd "$src" && "$PB_VENV/bin/python" benchmarks/build_stamp.py --arch "$ARCH") > .prebuilt/stamp
echo "prebuilt in $(( $(date +%s) - start )) s: $(ls .prebuilt/*.so) ($(du -h .prebuilt/*.so | cut -f1)), $(cat .prebuilt/stamp)"
