"""The small-plane tensor-core kernels once each, at small shapes, for compute-sanitizer on a GPU machine whose
runtime supports it (racecheck finds shared-memory races between a block's threads, memcheck out-of-bounds and
misaligned accesses: what the CPU emulation cannot show). Each case runs forward and backward with
DCLS_CONVERT_CUDA_PLANE=all and checks the results against the gather kernels' (DCLS_CONVERT_CUDA_TAPS=gather);
then float32 cases with DCLS_CONVERT_CUDA_TF32=all (the forward and input gradient in strips, the weight and
position gradients by the small-plane correlation, as 3xTF32).

    compute-sanitizer --tool racecheck python3 benchmarks/sanitize_planes.py
    python3 benchmarks/sanitize_planes.py --part corr     # one part, no sanitizer: run_gpu.sh's smoke run

Exit status: 0 agreed; 2 wrong results (the CUDA context still sound); 3 a fault (an exception: for a CUDA error, the
process's context is unusable).
    python benchmarks/sanitize_planes.py --device cpu     # the script itself, on CPU (the tests run it so)
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

# (N, C, H, W, window): the whole plane at 7 x 7 and 14 x 14 (and its correlation), strips of 8 channels a block
# at 28 x 28 (and the correlation's rows of 17-32 columns), strips of 4 channels a block (stage 1's rows; the
# correlation's rows of 33-64 columns), each in channels_last with C a multiple of 8 (vector
# staging) and, for the strips, C = 10 (element staging, a partial channel group)
CASES = [(16, 16, 7, 7, 17), (16, 8, 14, 14, 17), (16, 8, 28, 28, 17), (16, 10, 28, 28, 17),
         (16, 8, 20, 56, 17), (16, 12, 20, 56, 17), (16, 10, 20, 56, 17)]
# float32 strips: 8 channels a block (16: 16-byte loads of 4 channels; 12: a partial group, element loads), 4 at
# 28 x 28, 2 at 56 columns; float32's correlation: 8 images a job at 7 x 7, 4 at 14 x 14, one in the wide kernels,
# and stage 1's 56 rows in bands of 32 (the second of 24)
FLOAT_CASES = [(16, 16, 7, 7, 17), (16, 12, 14, 14, 17), (16, 8, 28, 28, 17), (16, 8, 20, 56, 17), (3, 8, 56, 56, 17)]


def run_case(case, device: str, dtype: torch.dtype, part: str = "all") -> float:
    """The largest difference between the small-plane kernels' and the gather kernels' results, relative to the
    largest result (forward, input, weight, position and bias gradients)."""
    from dcls_convert import ops

    N, C, H, W, L = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, 34, generator=g) * 0.1).to(device)
    p = ((torch.rand(2, C, 1, 34, generator=g) - 0.5) * (L - 1)).to(device)
    b = torch.randn(C, generator=g).to(device)
    # a different output gradient for every image (a kernel that mixes images up, or sums the bias twice, shows)
    gy = torch.randn(N, C, H, W, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    results = []
    tried = {"DCLS_CONVERT_CUDA_TF32" if dtype == torch.float32 else "DCLS_CONVERT_CUDA_PLANE": part}
    for env in (tried, {"DCLS_CONVERT_CUDA_TAPS": "gather"}):
        os.environ.update(env)
        try:
            xs, ws, ps, bs = (t.detach().clone().requires_grad_() for t in (x, w, p, b))
            y = ops.taps_conv(xs, ws, ps, bs, [L, L], [1, 1], [L // 2, L // 2])
            y.backward(gy)
            results.append([y.float(), xs.grad.float(), ws.grad.float(), ps.grad.float(), bs.grad.float()])
        finally:
            for k in env:
                del os.environ[k]
    if device == "cuda":
        torch.cuda.synchronize()
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(*results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--part", default="all", choices=["all", "conv", "corr"],
                    help="the small-plane parts run (DCLS_CONVERT_CUDA_PLANE, float32's DCLS_CONVERT_CUDA_TF32): "
                         "run_gpu.sh's smoke run takes each alone")
    args = ap.parse_args()
    wrong = []
    runs = [(c, torch.bfloat16) for c in CASES] + [(c, torch.float32) for c in FLOAT_CASES]
    for case, dtype in runs:
        try:
            err = run_case(case, args.device, dtype, args.part)
        except Exception as exc:  # a fault (an illegal address: the CUDA context is gone for this process)
            print(f"FAULT at {case} {dtype}: {type(exc).__name__}: {exc}", flush=True)
            sys.exit(3)
        print(f"{'x'.join(map(str, case[:4]))} window {case[4]} {str(dtype)[6:]}: plane vs gather, max rel diff "
              f"{err:.2e}", flush=True)
        # (16-bit outputs and a window rounded to 16 bits: a few bfloat16 steps; float32: 3xTF32)
        if not err < (0.05 if dtype == torch.bfloat16 else 1e-4):
            wrong.append((case, dtype))
    if wrong:  # wrong results, but the context is sound: a benchmark may still time the kernels
        print(f"WRONG: the small-plane kernels disagree with the gather kernels at {wrong}", flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
