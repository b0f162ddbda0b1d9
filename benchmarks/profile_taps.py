"""Runs the tap convolution's forward + backward a few times at one ConvNeXt-T stage shape, for a profiler:

    ncu --kernel-name regex:"tiled|build_tables|window_|plane_" --launch-skip 6 --launch-count 6 \\
        python benchmarks/profile_taps.py --stage 1 --dtype float32
"""
import argparse
import os

import torch

from dcls_convert import ops

SHAPES = {1: (64, 96, 56, 56), 2: (64, 192, 28, 28), 3: (64, 384, 14, 14), 4: (64, 768, 7, 7)}

ap = argparse.ArgumentParser()
ap.add_argument("--stage", type=int, default=1)
ap.add_argument("--dtype", default="float32")
ap.add_argument("--channels-last", action="store_true")
ap.add_argument("--window", type=int, default=17)
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("--mma", default="",
                help="tensor cores for: corr, conv, all or none (DCLS_CONVERT_CUDA_MMA; unset: the cost rule's choice)")
ap.add_argument("--plane", default="",
                help="small planes' tensor-core products for: conv, corr or all (DCLS_CONVERT_CUDA_PLANE)")
ap.add_argument("--tf32", default="",
                help="float32 on tensor cores as 3xTF32 for: corr, conv or all (DCLS_CONVERT_CUDA_TF32)")
args = ap.parse_args()
if args.mma:
    os.environ["DCLS_CONVERT_CUDA_MMA"] = args.mma
if args.plane:
    os.environ["DCLS_CONVERT_CUDA_PLANE"] = args.plane
if args.tf32:
    os.environ["DCLS_CONVERT_CUDA_TF32"] = args.tf32
N, C, H, W = SHAPES[args.stage]
dtype = getattr(torch, args.dtype)
x = torch.randn(N, C, H, W, device="cuda", dtype=dtype)
if args.channels_last:
    x = x.contiguous(memory_format=torch.channels_last)
L = args.window
w = (torch.randn(C, 1, 34, device="cuda") * 0.1).to(dtype).requires_grad_()
p = ((torch.rand(2, C, 1, 34, device="cuda") - 0.5) * (L - 1)).requires_grad_()
x.requires_grad_()
for _ in range(args.iters):
    ops.taps_conv(x, w, p, None, [L, L], [1, 1], [L // 2, L // 2]).sum().backward()
torch.cuda.synchronize()
