"""GPU benchmark of the depthwise tap convolution, side by side with cuDNN, and the card's floors.

Per ConvNeXt-T stage shape at batch 64, float32 NCHW and bfloat16 channels_last, window 17 with K = 34 bilinear
taps at random off-grid positions (the trained case, 4K = 136 corners per output) and on grid (a freshly
converted layer: K entries), and windows 31 / 51 at stage 1: forward, forward+backward and each backward part
(input gradient; weight+position gradient) of the tap engine, of its gather fallback (the kernels before the
tiled engine), of cuDNN's dense 7x7 and 17x17 depthwise convolutions and of construct + cuDNN 17x17 (the
reference library's approach). Floors measured in the same run: a device copy (bytes read + written) and
float32 / bfloat16 matrix products. Timing: CUDA events, warm-up, interleaved repeats, medians; and the kernels'
device time from the profiler ("GPU" columns: free of host queueing, which small layers' event timings include).

    python benchmarks/bench_gpu.py [--quick] [--methods] [--resnet-layers] [--model [--breakdown]]  (--help: the rest)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table  # noqa: E402

from dcls_convert import ops  # noqa: E402
from dcls_convert.methods import bloom  # noqa: E402

STAGES = [(64, 96, 56, 56), (64, 192, 28, 28), (64, 384, 14, 14), (64, 768, 7, 7)]
# run_gpu.sh sets DCLS_CONVERT_CUDA_PLANE=none where the small-plane kernels failed its smoke run (a kernel that
# faults leaves the process's CUDA context unusable): their arms and variants are skipped, tuning leaves them out
PLANE_OFF = os.environ.get("DCLS_CONVERT_CUDA_PLANE") == "none"


def cuda_time(fns: dict, repeats: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median ms per callable (CUDA events), callables interleaved so clock changes hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            samples[k].append(a.elapsed_time(b))
    return {k: statistics.median(v) for k, v in samples.items()}


def kernel_time(fns: dict, calls: int = 5) -> dict[str, float]:
    """Device time per call (ms) of each callable's kernels, summed from the profiler (CUPTI): the GPU's own work,
    without the host's queueing, which CUDA events around one call include whenever the host is the slower side
    (small layers: stages 3 and 4)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for k, fn in fns.items():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        # CUDA activity alone: each kernel, memcpy or memset counted once (with CPU ops recorded too, the ops
        # would carry their kernels' time again)
        out[k] = sum(e.self_device_time_total for e in prof.key_averages()) / calls / 1e3
    return out


def floors() -> dict[str, float]:
    """Device copy bandwidth (bytes read + written per s) and matrix-product rates (flop/s)."""
    src = torch.empty(512 * 2**20 // 4, device="cuda")
    dst = torch.empty_like(src)
    a32, b32 = torch.randn(8192, 8192, device="cuda"), torch.randn(8192, 8192, device="cuda")
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    t = cuda_time({"copy": lambda: dst.copy_(src), "f32": lambda: a32 @ b32, "bf16": lambda: a16 @ b16}, repeats=7)
    torch.backends.cuda.matmul.allow_tf32 = prev
    return {"copy": 2 * src.numel() * 4 / (t["copy"] * 1e-3), "f32": 2 * 8192**3 / (t["f32"] * 1e-3),
            "bf16": 2 * 8192**3 / (t["bf16"] * 1e-3)}


def layer_inputs(shape, dtype, channels_last, window, K, on_grid, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    N, C, H, W = shape
    x = torch.randn(N, C, H, W, generator=g).to("cuda", dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, K, generator=g) * 0.1).to("cuda", dtype)
    if on_grid:  # K distinct integer offsets, as convert() places a dense kernel's taps
        L = window
        cells = torch.stack([torch.randperm(L * L, generator=g)[:K] for _ in range(C)])
        p = torch.stack([cells // L - L // 2, cells % L - L // 2]).float().unsqueeze(2)
    else:
        p = (torch.rand(2, C, 1, K, generator=g) - 0.5) * (window - 1)
    return x, w, p.cuda()


def tap_fns(x, w, p, window, prefix="", stride=1):
    L = [window, window]
    pad = [window // 2, window // 2]
    st = [stride, stride]
    xg, wg, pg = (t.detach().clone().requires_grad_() for t in (x, w, p))
    y = ops.taps_conv(x, w, p, None, L, st, pad)
    gy = torch.randn_like(y)
    back = torch.ops.dcls_convert.taps_conv_backward
    args = (L, st, pad, "bilinear")
    return {
        prefix + "fwd": lambda: ops.taps_conv(x, w, p, None, L, st, pad),
        prefix + "fwd+bwd": lambda: torch.autograd.backward(ops.taps_conv(xg, wg, pg, None, L, st, pad), gy),
        prefix + "dgrad": lambda: back(gy, x, w, p, *args, [True, False, False, False]),
        prefix + "wgrad": lambda: back(gy, x, w, p, *args, [False, True, True, False]),
    }


def dense_fns(x, k, prefix):
    C = x.shape[1]
    wd = (torch.randn(C, 1, k, k, device="cuda") * 0.05).to(x.dtype)
    xg, wg = x.detach().clone().requires_grad_(), wd.clone().requires_grad_()
    gy = torch.randn_like(F.conv2d(x, wd, padding=k // 2, groups=C))
    return {prefix + "fwd": lambda: F.conv2d(x, wd, padding=k // 2, groups=C),
            prefix + "fwd+bwd": lambda: torch.autograd.backward(F.conv2d(xg, wg, padding=k // 2, groups=C), gy)}


def construct_fns(x, w, p, window):
    C = x.shape[1]
    xg, wg, pg = (t.detach().clone().requires_grad_() for t in (x, w, p))

    def step():
        kern = ops.construct(wg, pg, None, [window, window]).to(x.dtype)
        y = F.conv2d(xg, kern, padding=window // 2, groups=C)
        y.backward(torch.ones_like(y))
    return {"construct+cudnn fwd+bwd": step}


# The tile-mode arms already timed on a GPU (sixth session; runtime-pitch in the ninth): --new-arms skips them.
MEASURED_ARMS = ("first", "direct", "one-load", "fitted-cl", "unpaired", "runtime-pitch")


def tuned_of(tuned: dict, part: str) -> str:
    """The paths tuning chose for part ("forward", "grad_input", "grad_taps") of a layer, '+' between several."""
    return "+".join(sorted({path for key, path in tuned.items() if key.startswith(part)})) or "-"


def run_layers(quick: bool, fl: dict, taps_only: bool = False, gather: bool = True, new_arms: bool = False,
               bf16_nchw: bool = False) -> list[dict]:
    """The tap engine per stage shape against cuDNN and the floors; taps_only: the engine's own columns (to compare
    builds of it), gather: also its fallback kernels; new_arms: only the A/B arms no GPU has timed yet; bf16_nchw:
    also bfloat16 rows not in channels_last (AMP without it: the tensor-core kernels stage those an element a
    load)."""
    rows = []
    cases = [(s, 17) for s in STAGES] + ([] if quick else [(STAGES[0], 31), (STAGES[0], 51)])
    for shape, window in cases:
        kinds = [(torch.float32, False), (torch.bfloat16, True)] + ([(torch.bfloat16, False)] if bf16_nchw else [])
        for dtype, cl in kinds:
            K = 34
            x, w, p = layer_inputs(shape, dtype, cl, window, K, on_grid=False)
            xo, wo, po = layer_inputs(shape, dtype, cl, window, K, on_grid=True)
            fns = tap_fns(x, w, p, window)
            fns["on-grid fwd"] = tap_fns(xo, wo, po, window)["fwd"]
            fns["on-grid wgrad"] = tap_fns(xo, wo, po, window)["wgrad"]
            if not taps_only:
                fns.update(construct_fns(x, w, p, window))
                fns.update(dense_fns(x, 7, "cudnn7 "))
                if window == 17:
                    fns.update(dense_fns(x, 17, "cudnn17 "))
            t = cuda_time(fns)
            gpu = kernel_time({k: fns[k] for k in ("fwd", "fwd+bwd", "wgrad", "cudnn7 fwd+bwd", "on-grid fwd",
                                                   "on-grid wgrad") if k in fns})
            # the tiles of the first GPU sessions (8 rows per thread, power-of-two widths, channel-grouped small
            # planes) against the chosen ones, same kernels, same run
            modes = {}
            # direct: the chosen tiles, channels_last outputs stored per thread; one-load: the chosen tiles, staging
            # with one load in flight per thread; fitted-cl: fitted tile widths for channels_last too; unpaired:
            # on-grid tables without paired rows (on-grid taps are where rows pair); runtime-pitch: the forward
            # kernels reading the row pitch at run time (the kernels compiled for ConvNeXt's pitches are the default);
            # all with the tensor cores off, whose cost rule would take the 16-bit rows at the large planes
            for mode in ("first", "direct", "one-load", "fitted-cl", "unpaired", "runtime-pitch"):
                if (mode in ("direct", "fitted-cl") and not cl) or (new_arms and mode in MEASURED_ARMS):
                    continue
                os.environ["DCLS_CONVERT_CUDA_TILES"] = mode
                os.environ["DCLS_CONVERT_CUDA_MMA"] = "none"
                try:
                    timed = ({"on-grid fwd": tap_fns(xo, wo, po, window)["fwd"]} if mode == "unpaired" else
                             {k: v for k, v in tap_fns(x, w, p, window).items() if k in ("fwd", "fwd+bwd")})
                    modes.update({(mode, k): v for k, v in kernel_time(timed).items()})
                finally:
                    del os.environ["DCLS_CONVERT_CUDA_TILES"]
                    del os.environ["DCLS_CONVERT_CUDA_MMA"]
            if dtype != torch.float32:  # tensor cores (16-bit only): every part forced on, each alone; and off
                for part in ("all", "corr", "conv", "none"):
                    os.environ["DCLS_CONVERT_CUDA_MMA"] = part
                    try:
                        arm = {**tap_fns(x, w, p, window), "on-grid fwd": tap_fns(xo, wo, po, window)["fwd"],
                               "on-grid wgrad": tap_fns(xo, wo, po, window)["wgrad"]}
                        modes.update({("mma " + part, k): v for k, v in kernel_time(arm).items()})
                    finally:
                        del os.environ["DCLS_CONVERT_CUDA_MMA"]
                # the tensor-core convolution staging 8 input rows per round (as built in the seventh session)
                os.environ["DCLS_CONVERT_CUDA_MMA"] = "all"
                os.environ["DCLS_CONVERT_CUDA_MMA_BAND"] = "8"
                try:
                    arm = {k: v for k, v in tap_fns(x, w, p, window).items() if k in ("fwd", "fwd+bwd")}
                    modes.update({("mma band-8", k): v for k, v in kernel_time(arm).items()})
                finally:
                    del os.environ["DCLS_CONVERT_CUDA_MMA"]
                    del os.environ["DCLS_CONVERT_CUDA_MMA_BAND"]
            if dtype != torch.float32 and not PLANE_OFF:
                # small planes' forward and input gradient (window_plane.h; 28 x 28 in strips of output rows,
                # twelfth session; 56 x 56 in strips of 4 channels a block, thirteenth) and weight and position
                # gradients (window_plane_corr.h, rows up to 16 columns, eleventh session; up to 64, fourteenth)
                # as tensor-core products per channel (opt-in)
                os.environ["DCLS_CONVERT_CUDA_PLANE"] = "all"
                try:
                    arm = tap_fns(x, w, p, window)
                    arm["on-grid fwd"] = tap_fns(xo, wo, po, window)["fwd"]
                    arm["on-grid wgrad"] = tap_fns(xo, wo, po, window)["wgrad"]
                    modes.update({("plane", k): v for k, v in kernel_time(arm).items()})
                finally:
                    del os.environ["DCLS_CONVERT_CUDA_PLANE"]
            # tuning (path_tuning.h, twelfth session): each part on the path that was fastest when timed on this
            # card, the tables' timed with off-grid taps; the paths it chose go in the row
            os.environ["DCLS_CONVERT_CUDA_TUNE"] = "on"
            ops.clear_tuned_paths()
            try:
                arm = tap_fns(x, w, p, window)
                arm["on-grid fwd"] = tap_fns(xo, wo, po, window)["fwd"]
                modes.update({("tuned", k): v for k, v in kernel_time(arm).items()})
                tuned = ops.tuned_paths()
            finally:
                del os.environ["DCLS_CONVERT_CUDA_TUNE"]
                ops.clear_tuned_paths()
            if dtype == torch.float32:  # float32 on tensor cores as 3xTF32 (opt-in): the correlation on small
                # planes (sixteenth session) or rows (tenth), the forward and input gradient in strips (fifteenth);
                # "tf32 rows": the rows' correlation where the small planes' would run
                os.environ["DCLS_CONVERT_CUDA_TF32"] = "all"
                try:
                    arm = {k: v for k, v in tap_fns(x, w, p, window).items() if k in ("fwd", "dgrad", "wgrad", "fwd+bwd")}
                    arm["on-grid wgrad"] = tap_fns(xo, wo, po, window)["wgrad"]
                    modes.update({("tf32", k): v for k, v in kernel_time(arm).items()})
                    os.environ["DCLS_CONVERT_CUDA_PLANE"] = "none"
                    modes.update({("tf32 rows", k): v for k, v in kernel_time(
                        {"wgrad": tap_fns(x, w, p, window)["wgrad"]}).items()})
                finally:
                    del os.environ["DCLS_CONVERT_CUDA_TF32"]
                    os.environ.pop("DCLS_CONVERT_CUDA_PLANE", None)
                    if PLANE_OFF:  # (run_gpu.sh's, after a smoke fault: kept for every later arm)
                        os.environ["DCLS_CONVERT_CUDA_PLANE"] = "none"
            if gather and not taps_only:
                os.environ["DCLS_CONVERT_CUDA_TAPS"] = "gather"  # the kernels before the tiled engine
                try:
                    t.update(cuda_time({"gather " + k: v for k, v in tap_fns(x, w, p, window).items()}, repeats=5))
                finally:
                    del os.environ["DCLS_CONVERT_CUDA_TAPS"]
            N, C, H, W = shape
            outs = N * C * H * W
            mem_ms = 2 * outs * x.element_size() / fl["copy"] * 1e3
            ari_ms = 2 * 4 * K * outs / fl["f32"] * 1e3  # the engine multiplies in float32 (no tensor cores)
            floor = max(mem_ms, ari_ms)
            nan = float("nan")

            def arm_ms(mode, part):  # an A/B arm's GPU time, NaN where this run skipped it
                return modes.get((mode, part), nan)


            row = {
                "shape": "x".join(map(str, shape)), "L": window,
                "dtype": "fp32 NCHW" if dtype == torch.float32 else "bf16 CL" if cl else "bf16 NCHW",
                "fwd": t["fwd"], "fwd/floor": t["fwd"] / floor, "on-grid fwd": t["on-grid fwd"],
                "dgrad": t["dgrad"], "wgrad": t["wgrad"], "wgrad/floor": t["wgrad"] / ari_ms,
                "fwd+bwd": t["fwd+bwd"],
                "GPU fwd": gpu["fwd"], "GPU fwd/floor": gpu["fwd"] / floor, "GPU wgrad/floor": gpu["wgrad"] / ari_ms,
                "GPU fwd+bwd": gpu["fwd+bwd"],
                "GPU first-tiles fwd": arm_ms("first", "fwd"),
                "GPU first-tiles fwd+bwd": arm_ms("first", "fwd+bwd"),
                "first-tiles / chosen fwd+bwd": arm_ms("first", "fwd+bwd") / gpu["fwd+bwd"],
                "GPU direct-stores fwd": arm_ms("direct", "fwd"),
                "GPU one-load fwd": arm_ms("one-load", "fwd"),
                "GPU one-load fwd+bwd": arm_ms("one-load", "fwd+bwd"),
                "GPU fitted-cl fwd+bwd": arm_ms("fitted-cl", "fwd+bwd"),
                "GPU on-grid fwd": gpu["on-grid fwd"], "GPU unpaired on-grid fwd": arm_ms("unpaired", "on-grid fwd"),
                "GPU runtime-pitch fwd": arm_ms("runtime-pitch", "fwd"),
                "GPU runtime-pitch fwd+bwd": arm_ms("runtime-pitch", "fwd+bwd"),
                "GPU wgrad": gpu["wgrad"], "GPU on-grid wgrad": gpu["on-grid wgrad"],
                "GPU tables fwd": arm_ms("mma none", "fwd"),
                "GPU tables dgrad": arm_ms("mma none", "dgrad"),
                "GPU tables wgrad": arm_ms("mma none", "wgrad"),
                "GPU tables fwd+bwd": arm_ms("mma none", "fwd+bwd"),
                "GPU tables on-grid fwd": arm_ms("mma none", "on-grid fwd"),
                "GPU tables on-grid wgrad": arm_ms("mma none", "on-grid wgrad"),
                "GPU mma on-grid wgrad": arm_ms("mma corr", "on-grid wgrad"),
                "GPU mma fwd": arm_ms("mma conv", "fwd"),
                "GPU mma fwd/floor": arm_ms("mma conv", "fwd") / floor,
                "GPU mma dgrad": arm_ms("mma conv", "dgrad"),
                "GPU mma wgrad": arm_ms("mma corr", "wgrad"),
                "GPU mma wgrad/floor": arm_ms("mma corr", "wgrad") / ari_ms,
                "GPU mma fwd+bwd": arm_ms("mma all", "fwd+bwd"),
                "GPU mma band-8 fwd": arm_ms("mma band-8", "fwd"),
                "GPU mma band-8 fwd+bwd": arm_ms("mma band-8", "fwd+bwd"),
                "GPU plane fwd": arm_ms("plane", "fwd"),
                "GPU plane fwd/floor": arm_ms("plane", "fwd") / floor,
                "GPU plane dgrad": arm_ms("plane", "dgrad"),
                "GPU plane on-grid fwd": arm_ms("plane", "on-grid fwd"),
                "GPU plane wgrad": arm_ms("plane", "wgrad"),
                "GPU plane wgrad/floor": arm_ms("plane", "wgrad") / ari_ms,
                "GPU plane on-grid wgrad": arm_ms("plane", "on-grid wgrad"),
                "GPU plane fwd+bwd": arm_ms("plane", "fwd+bwd"),
                "GPU tuned fwd": arm_ms("tuned", "fwd"),
                "GPU tuned dgrad": arm_ms("tuned", "dgrad"),
                "GPU tuned wgrad": arm_ms("tuned", "wgrad"),
                "GPU tuned fwd+bwd": arm_ms("tuned", "fwd+bwd"),
                "tuned paths": "/".join(tuned_of(tuned, part) for part in ("forward", "grad_input", "grad_taps")),
                "GPU tf32 fwd": arm_ms("tf32", "fwd"),
                "GPU tf32 fwd/floor": arm_ms("tf32", "fwd") / floor,
                "GPU tf32 dgrad": arm_ms("tf32", "dgrad"),
                "GPU tf32 wgrad": arm_ms("tf32", "wgrad"),
                "GPU tf32 wgrad/floor": arm_ms("tf32", "wgrad") / ari_ms,
                "GPU tf32 on-grid wgrad": arm_ms("tf32", "on-grid wgrad"),
                "GPU tf32 fwd+bwd": arm_ms("tf32", "fwd+bwd"),
                "GPU tf32 rows wgrad": arm_ms("tf32 rows", "wgrad"),
                "floor mem/arith": f"{mem_ms:.3f}/{ari_ms:.3f}",
            }
            if "gather fwd" in t:
                row.update({"gather fwd+dgrad": t["gather fwd"] + t["gather dgrad"],
                            "speedup fwd+dgrad": (t["gather fwd"] + t["gather dgrad"]) / (t["fwd"] + t["dgrad"]),
                            "gather fwd+bwd": t["gather fwd+bwd"]})
            if not taps_only:
                row.update({"cudnn7 fwd": t["cudnn7 fwd"], "cudnn7 fwd+bwd": t["cudnn7 fwd+bwd"],
                            "fwd+bwd / cudnn7": t["fwd+bwd"] / t["cudnn7 fwd+bwd"],
                            "GPU fwd+bwd / cudnn7": gpu["fwd+bwd"] / gpu["cudnn7 fwd+bwd"],
                            "GPU mma fwd+bwd / cudnn7": arm_ms("mma all", "fwd+bwd") / gpu["cudnn7 fwd+bwd"],
                            "GPU plane fwd+bwd / cudnn7": arm_ms("plane", "fwd+bwd") / gpu["cudnn7 fwd+bwd"],
                            "GPU tuned fwd+bwd / cudnn7": arm_ms("tuned", "fwd+bwd") / gpu["cudnn7 fwd+bwd"],
                            "cudnn17 fwd+bwd": t.get("cudnn17 fwd+bwd", nan),
                            "construct+cudnn fwd+bwd": t["construct+cudnn fwd+bwd"]})
            rows.append(row)
            # the row as soon as it is measured: a run cut short by its time limit keeps what it measured
            print(f"  measured {row['shape']} L={window} {row['dtype']}: "
                  + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    print("\nPer layer, ms (medians of CUDA-event timings around one call: what a caller waits, host included); "
          "'GPU' columns: the kernels' own device time (profiler), which the floors are about. K = 34 bilinear "
          "taps, random off-grid positions unless 'on-grid'; floor = max(memory, arithmetic at the float32 GEMM "
          "rate) for the forward; wgrad/floor uses the arithmetic floor (one correlation per corner). 'first-tiles':"
          " DCLS_CONVERT_CUDA_TILES=first (the first sessions' tile shapes and stores), same kernels; 'direct-"
          "stores': the chosen tiles with channels_last outputs stored by their threads (=direct); 'one-load': "
          "the chosen tiles, staging with one load in flight per thread (=one-load); 'fitted-cl': channels_last "
          "forward and input gradient on fitted tile widths (=fitted-cl); 'unpaired': on-grid tables without "
          "paired rows (=unpaired); 'runtime-pitch': the forward kernels reading the row pitch at run time "
          "(=runtime-pitch); plain 'GPU' columns: the default choice (16-bit rows: the tensor cores where their cost "
          "rule says, mma_wanted); 'tables': 16-bit rows with DCLS_CONVERT_CUDA_MMA=none; 'mma': tensor cores "
          "forced (16-bit rows): fwd and dgrad with =conv, "
          "wgrad with =corr, fwd+bwd with =all ('band-8': =all with DCLS_CONVERT_CUDA_MMA_BAND=8, 8 input rows staged "
          "per round); the floors stay those of the table's float32 products; 'plane': 16-bit rows with "
          "DCLS_CONVERT_CUDA_PLANE=all (every part as tensor-core products per channel: window_plane.h, "
          "window_plane_corr.h; 28 x 28 and 56 x 56: the forward and input gradient in strips); "
          "'tuned': DCLS_CONVERT_CUDA_TUNE=on (each part on the path "
          "that was fastest when timed here; 'tuned paths': forward/input gradient/weight+position gradients); "
          "'tf32': float32 rows with "
          "DCLS_CONVERT_CUDA_TF32=all (on tensor cores as 3xTF32: the weight and position gradients on small planes "
          "up to 32 columns, else on rows, the forward and input gradient in strips; 'tf32 rows': the weight and "
          "position gradients on rows everywhere, DCLS_CONVERT_CUDA_PLANE=none).")
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    print_table(rows, cols)
    return rows


def run_strided() -> None:
    """A stride-2 depthwise layer (64x96x112x112, window 17, K = 34, as a converted MobileNet/EfficientNet
    downsampling conv): the input gradient by stride phases against the gather kernel it replaces, and the layer
    against cuDNN's dense 7x7 stride-2 depthwise conv."""
    rows = []
    shape, window = (64, 96, 112, 112), 17
    for dtype, cl in [(torch.float32, False), (torch.bfloat16, True)]:
        x, w, p = layer_inputs(shape, dtype, cl, window, 34, on_grid=False)
        fns = tap_fns(x, w, p, window, stride=2)
        C = shape[1]
        wd = (torch.randn(C, 1, 7, 7, device="cuda") * 0.05).to(dtype)
        xg, wg = x.detach().clone().requires_grad_(), wd.clone().requires_grad_()
        gy = torch.randn_like(F.conv2d(x, wd, stride=2, padding=3, groups=C))
        fns["cudnn7 s2 fwd+bwd"] = lambda xg=xg, wg=wg, gy=gy: torch.autograd.backward(
            F.conv2d(xg, wg, stride=2, padding=3, groups=C), gy)
        t, gpu = cuda_time(fns), kernel_time({k: fns[k] for k in ("dgrad", "fwd+bwd", "cudnn7 s2 fwd+bwd")})
        os.environ["DCLS_CONVERT_CUDA_TAPS"] = "gather"
        try:
            gather = kernel_time({"dgrad": tap_fns(x, w, p, window, stride=2)["dgrad"]})["dgrad"]
        finally:
            del os.environ["DCLS_CONVERT_CUDA_TAPS"]
        rows.append({"shape": "x".join(map(str, shape)) + " s2", "dtype": "fp32 NCHW" if dtype == torch.float32 else "bf16 CL",
                     "fwd": t["fwd"], "dgrad": t["dgrad"], "GPU dgrad": gpu["dgrad"], "GPU gather dgrad": gather,
                     "fwd+bwd": t["fwd+bwd"], "GPU fwd+bwd": gpu["fwd+bwd"],
                     "GPU fwd+bwd / cudnn7 s2": gpu["fwd+bwd"] / gpu["cudnn7 s2 fwd+bwd"]})
    print("\nStride 2 (input gradient by stride phases), ms")
    print_table(rows, list(rows[0]))


def run_construct() -> None:
    """The construct op alone (the dense path of DCLS layers): bilinear vs gaussian forward and backward."""
    rows = []
    for P, L in [(768, 17), (96 * 96, 17), (768, 51)]:
        g = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(P, 1, 34, device="cuda", generator=g)
        p = (torch.rand(2, P, 1, 34, device="cuda", generator=g) - 0.5) * L * 1.3
        s = torch.rand(2, P, 1, 34, device="cuda", generator=g) * 2 - 0.5
        fns = {}
        for interp in ("bilinear", "gaussian"):
            sig = s if interp == "gaussian" else None
            wg, pg = w.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
            fns[interp + " fwd"] = lambda sig=sig, interp=interp: ops.construct(w, p, sig, [L, L], interp)
            fns[interp + " fwd+bwd"] = lambda sig=sig, interp=interp, wg=wg, pg=pg: \
                ops.construct(wg, pg, sig, [L, L], interp).sum().backward()
        t = cuda_time(fns)
        rows.append({"planes x K": f"{P} x 34", "L": L, **{k: t[k] for k in fns}})
    print("\nconstruct alone, ms (float32, K = 34 random taps)")
    print_table(rows, list(rows[0]))


def module_fns(layers: dict, shape, amp: bool) -> dict:
    """'<name> fwd' and '<name> fwd+bwd' callables per layer on one input: float32 NCHW, or AMP bfloat16
    channels_last (as timm trains)."""
    x = torch.randn(shape, device="cuda")
    if amp:
        x = x.contiguous(memory_format=torch.channels_last)
    fns = {}
    for name, layer in layers.items():
        layer = layer.cuda()
        xg = x.detach().clone().requires_grad_()

        def fwd(layer=layer):
            with torch.autocast("cuda", torch.bfloat16, enabled=amp):
                return layer(x)

        def fwd_bwd(layer=layer, xg=xg):
            with torch.autocast("cuda", torch.bfloat16, enabled=amp):
                y = layer(xg)
            y.backward(torch.ones_like(y))
        fns[name + " fwd"], fns[name + " fwd+bwd"] = fwd, fwd_bwd
    return fns


# resnet50's 3x3 convs (channels, input size, stride), batch 64
RESNET_CONVS = [(64, 56, 1), (128, 56, 2), (128, 28, 1), (256, 28, 2), (256, 14, 1), (512, 14, 2), (512, 7, 1)]


def run_resnet_layers() -> None:
    """resnet50's dense 3x3 convs converted by each method (convert's defaults), against the dense cuDNN conv of
    the converted layer's window (the target: no converted layer slower than it) and the original 3x3; fwd+bwd,
    event timing and the kernels' device time."""
    import torch.nn as nn

    import dcls_convert as dc

    rows = []
    for C, H, s in RESNET_CONVS:
        conv = nn.Conv2d(C, C, 3, stride=s, padding=1, bias=False)
        layers = {"original 3x3": conv}
        for method, cls in (("dcls", dc.DclsConv2d), ("partial", dc.PartialDilatedConv2d), ("bloom", dc.BloomConv2d)):
            m = cls.from_conv(conv)
            L = m.window[0]
            layers[method] = m
            layers.setdefault(f"dense {L}x{L}", nn.Conv2d(C, C, L, stride=s, padding=L // 2, bias=False))
        for amp in (False, True):
            fns = {k: v for k, v in module_fns(layers, (64, C, H, H), amp).items() if k.endswith("fwd+bwd")}
            t, gpu = cuda_time(fns), kernel_time(fns)
            for name, layer in layers.items():
                k = name + " fwd+bwd"
                dense = f"dense {layer.window[0]}x{layer.window[0]} fwd+bwd" if hasattr(layer, "window") else k
                rows.append({"conv": f"{C}@{H} s{s}", "precision": "AMP bf16 CL" if amp else "fp32 NCHW",
                             "layer": name, "engine": layer.engine_name() if hasattr(layer, "engine_name") else "-",
                             "fwd+bwd": t[k], "GPU fwd+bwd": gpu[k], "x dense same window": t[k] / t[dense],
                             "GPU x dense same window": gpu[k] / gpu[dense]})
        print(f"  measured resnet conv {C}@{H} s{s}", flush=True)
    print("\nresnet50 3x3 convs per method (batch 64), ms; target: x dense same window <= 1")
    print_table(rows, list(rows[0]))


def run_methods() -> None:
    """Each method's depthwise layer as convert() builds it from a 7x7 depthwise conv (freshly converted: dcls
    taps on grid), per engine, at the ConvNeXt-T stage shapes: forward and forward+backward (float32 NCHW, and
    AMP bfloat16 channels_last as timm trains); the engine rule per method and device comes from this table."""
    import torch.nn as nn

    import dcls_convert as dc

    rows = []
    for shape in STAGES:
        N, C, H, W = shape
        conv = nn.Conv2d(C, C, 7, padding=3, groups=C).cuda()
        layers = {"cudnn 7x7 (original)": conv,
                  "dcls K=34 w17 taps": dc.DclsConv2d.from_conv(conv, kernel_count=34),
                  "partial taps": dc.PartialDilatedConv2d.from_conv(conv),
                  "bloom taps": dc.BloomConv2d.from_conv(conv, engine="taps"),
                  "bloom dense (cudnn blur + dilated)": dc.BloomConv2d.from_conv(conv, engine="dense")}
        for amp in (False, True):
            fns = module_fns(layers, shape, amp)
            t = cuda_time(fns)
            for name in layers:
                rows.append({"shape": "x".join(map(str, shape)), "precision": "AMP bf16 CL" if amp else "fp32 NCHW",
                             "layer": name, "fwd": t[name + " fwd"], "fwd+bwd": t[name + " fwd+bwd"],
                             "x cudnn7 fwd+bwd": t[name + " fwd+bwd"] / t["cudnn 7x7 (original) fwd+bwd"]})
    print("\nEach method's layer from a 7x7 depthwise conv (convert's defaults), per engine, ms")
    print_table(rows, list(rows[0]))


def _swap_in_dcls_package(model):
    """Every converted DclsConv2d replaced by the DCLS paper's package layer of the same shape (v0, bilinear)."""
    import dcls_convert as dc
    from dcls_package import dcls_package_layer

    for name, m in list(model.named_modules()):
        if isinstance(m, dc.DclsConv2d):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            layer = dcls_package_layer(m.in_channels, m.out_channels, m.kernel_count, m.window[0], m.groups,
                                       m.window[0] // 2)
            setattr(parent, name.rsplit(".", 1)[-1], layer)
    return model


# the dcls variant run with DCLS_CONVERT_CUDA_TILES=first (the first sessions' tiles), to time the tile choice
FIRST_TILES = "dcls, first tiles"
# variants run with DCLS_CONVERT_CUDA_MMA=all (every part of their 16-bit layers on tensor cores; by default the
# cost rule picks per layer and part)
MMA = ", tensor cores"
# variants run with DCLS_CONVERT_CUDA_MMA=none (the tables' kernels for every part, as before the cost rule)
TABLES = ", tables"
# bloom with its fixed blur on the tap engine too (bloom.CONV_BLUR_DEVICES emptied; by default the blur runs on
# cuDNN and the dilated taps on the tap engine)
BLUR_ON_TAPS = "bloom, blur on tap engine"
# variants run with DCLS_CONVERT_CUDA_TF32=all (float32 layers on tensor cores as 3xTF32, opt-in: the weight and
# position gradients on rows, tenth session, or small planes, sixteenth; the forward and input gradient in strips,
# fifteenth): their float32
# step is the one it can change
TF32 = ", tf32"
# variants run with DCLS_CONVERT_CUDA_PLANE=all (every part of the 16-bit layers on small planes, ConvNeXt-T's stages
# 3 and 4, as tensor-core products per channel; opt-in, built in the eleventh session)
PLANE = ", plane"
# variants run with DCLS_CONVERT_CUDA_TUNE=on (each part of each layer on the path that was fastest when timed on
# this card, the first step timing them; twelfth session)
TUNED = ", tuned"
# variants whose model runs as torch.compile(mode="reduce-overhead") (inductor and CUDA graphs: the host no longer
# queues each kernel), AMP only, against the original compiled the same way; run only when --variants names them
# (each compiles for a minute or more)
COMPILED = "compiled: "


def _variants(name):
    """model name -> {variant: builder}: the original, each method with its default options, dcls on the dense
    engine, and the DCLS paper's package swapped in."""
    import timm

    import dcls_convert as dc
    from dcls_package import available

    dense_rules = dc.TargetRules(min_kernel=3, stride=1) if name == "resnet50" else None

    def convert(method, **options):
        return lambda: dc.convert(timm.create_model(name), method, rules=dense_rules, **options)[0]

    dcls_options = {"kernel_count": 34, "share_positions": "stage"} if name.startswith("convnext") else {}
    def off_grid(build):
        """Positions moved off the integer grid, as after fine-tuning: every bilinear tap has four corners."""
        def run():
            model = build()
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, dc.DclsConv2d):
                        m.positions.add_(0.37)
            return model
        return run

    out = {"original": lambda: timm.create_model(name),
           "dcls" + (" K=34 w17 shared" if dcls_options else ""): convert("dcls", **dcls_options),
           "dcls, positions off grid": off_grid(convert("dcls", **dcls_options)),
           FIRST_TILES: convert("dcls", **dcls_options),
           "dcls engine=dense": convert("dcls", engine="dense", **dcls_options),
           "partial": convert("partial"), "bloom": convert("bloom"), BLUR_ON_TAPS: convert("bloom"),
           "bloom engine=dense": convert("bloom", engine="dense")}
    dcls_name = "dcls" + (" K=34 w17 shared" if dcls_options else "")
    out.update({v + MMA: out[v] for v in (dcls_name, "partial", "bloom")})
    out.update({v + TABLES: out[v] for v in (dcls_name, "partial", "bloom")})
    out.update({v + TF32: out[v] for v in (dcls_name, "partial", "bloom")})
    out.update({v + PLANE: out[v] for v in (dcls_name, "dcls, positions off grid", "partial", "bloom")})
    out.update({COMPILED + v: out[v] for v in ("original", dcls_name, "dcls, positions off grid", "partial", "bloom")})
    out.update({COMPILED + v + PLANE: out[v] for v in (dcls_name, "dcls, positions off grid", "partial", "bloom")})
    out.update({v + TUNED: out[v] for v in (dcls_name, "dcls, positions off grid", "partial", "bloom")})
    out.update({COMPILED + v + TUNED: out[v] for v in (dcls_name, "dcls, positions off grid", "partial", "bloom")})
    if available() and name.startswith("convnext"):
        out["dcls package 0.1.1 (v0)"] = lambda: _swap_in_dcls_package(convert("dcls", **dcls_options)())
    return out


def gpu_busy_ms(step) -> float:
    """Device time of one step (ms), its kernels' own time summed over two profiled steps: where the host queues
    the work slower than the GPU runs it (convnext_tiny under AMP on an H200), step times swing with the host
    (+-15 % between passes in the sixth session) while this stayed within 1-2 % across its three calls."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages() if e.self_device_time_total > 0) / 2e3


def kernel_breakdown(step, top: int = 8) -> str:
    """The `top` GPU kernels of two profiled steps by their own device time, with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: -e.self_device_time_total)
    launches = sum(e.count for e in events) // 2
    head = f"    GPU busy {total / 2e3:.1f} ms/step, {launches} kernel launches (and copies/fills) per step\n"
    return head + "\n".join(f"    {e.self_device_time_total / total:6.1%} {e.self_device_time_total / 2e3:8.3f} ms/step "
                     f"x{e.count // 2:<4d} {e.key[:110]}" for e in events[:top])


def host_breakdown(step, top: int = 8) -> str:
    """Host time of a step (queued without waiting for the GPU) and the ops that spend it: when it exceeds the
    GPU's busy time, the GPU idles."""
    import time

    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    host_ms = (time.perf_counter() - t0) / 3 * 1e3
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return f"    host {host_ms:.1f} ms/step to queue; top host ops (self CPU, profiled step):\n" + "\n".join(
        f"    {e.self_cpu_time_total / 1e3:8.3f} ms x{e.count:<5d} {e.key[:100]}" for e in events)


def run_model(breakdown: bool = False, models=("convnext_tiny", "resnet50"), only=None, passes: int = 1) -> None:
    """One SGD training step, batch 64, 224x224, channels_last: convnext_tiny (depthwise 7x7) and resnet50 (dense
    3x3), original vs each method vs the DCLS paper's package, AMP bfloat16 and float32; ms/step (median of CUDA
    events), images/s, peak memory, ratios to the original of the same pass. passes > 1 runs every variant again
    (rows "(pass 2)", ...): the spread between passes says how far one row can be trusted."""
    rows = []
    x = torch.randn(64, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (64,), device="cuda")
    for model_name, pas in [(m, p) for p in range(passes) for m in models]:
        for variant, build in _variants(model_name).items():
            name = variant + (f" (pass {pas + 1})" if passes > 1 else "")
            if only and not any(variant == o or (o.endswith("*") and variant.startswith(o[:-1])) for o in only):
                continue
            compiled = variant.startswith(COMPILED)
            if compiled and not only:
                continue
            try:
                m = build().cuda().to(memory_format=torch.channels_last)
            except Exception as exc:  # a row that cannot run says why; the table goes on
                rows.append({"model": model_name, "variant": name, "pass": pas, "precision": "-",
                             "ms/step": float("nan"), "note": f"{type(exc).__name__}: {str(exc)[:60]}"})
                continue
            opt = torch.optim.SGD(m.parameters(), lr=1e-3)
            if variant == FIRST_TILES:  # the tables' kernels with the first sessions' tiles
                os.environ["DCLS_CONVERT_CUDA_TILES"] = "first"
                os.environ["DCLS_CONVERT_CUDA_MMA"] = "none"
            if variant.endswith(MMA):
                os.environ["DCLS_CONVERT_CUDA_MMA"] = "all"
            if variant.endswith(TABLES):
                os.environ["DCLS_CONVERT_CUDA_MMA"] = "none"
            if variant.endswith(TF32):
                os.environ["DCLS_CONVERT_CUDA_TF32"] = "all"
            if variant.endswith(PLANE) and PLANE_OFF:
                rows.append({"model": model_name, "variant": name, "pass": pas, "precision": "-",
                             "ms/step": float("nan"), "note": "skipped: the small-plane smoke run failed"})
                continue
            if variant.endswith(PLANE):
                os.environ["DCLS_CONVERT_CUDA_PLANE"] = "all"
            if variant.endswith(TUNED):
                os.environ["DCLS_CONVERT_CUDA_TUNE"] = "on"
                ops.clear_tuned_paths()
            bloom.CONV_BLUR_DEVICES = set() if variant == BLUR_ON_TAPS else {"cuda"}
            run = torch.compile(m, mode="reduce-overhead") if compiled else m
            for amp in (True,) if compiled else (True, False):
                def step(run=run, opt=opt, amp=amp, compiled=compiled):
                    if compiled:
                        torch.compiler.cudagraph_mark_step_begin()
                    with torch.autocast("cuda", torch.bfloat16, enabled=amp):
                        loss = F.cross_entropy(run(x), target)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                torch.cuda.reset_peak_memory_stats()
                ms = cuda_time({"s": step}, repeats=15, warmup=3)["s"]
                if breakdown and amp and pas == 0:
                    print(f"\n{model_name} / {variant} / AMP bf16: {ms:.1f} ms/step; top kernels", flush=True)
                    print(kernel_breakdown(step), flush=True)
                    print(host_breakdown(step), flush=True)
                peak = torch.cuda.max_memory_allocated() / 2**30
                rows.append({"model": model_name, "variant": name, "pass": pas,
                             "precision": "AMP bf16" if amp else "fp32",
                             "ms/step": ms, "images/s": 64e3 / ms, "GPU busy ms": gpu_busy_ms(step),
                             "peak GiB": peak, "note": ""})
                print(f"  measured {model_name} / {name} / {rows[-1]['precision']}: {ms:.1f} ms/step, "
                      f"{rows[-1]['peak GiB']:.2f} GiB", flush=True)
            if variant.endswith(TUNED):  # what the card picked, per layer shape and part
                print("    tuned: " + "\n    tuned: ".join(f"{k} -> {v}" for k, v in ops.tuned_paths().items()),
                      flush=True)
            os.environ.pop("DCLS_CONVERT_CUDA_TILES", None)
            os.environ.pop("DCLS_CONVERT_CUDA_MMA", None)
            os.environ.pop("DCLS_CONVERT_CUDA_TF32", None)
            os.environ.pop("DCLS_CONVERT_CUDA_PLANE", None)
            if PLANE_OFF:
                os.environ["DCLS_CONVERT_CUDA_PLANE"] = "none"
            os.environ.pop("DCLS_CONVERT_CUDA_TUNE", None)
            bloom.CONV_BLUR_DEVICES = {"cuda"}
            del m, opt, run
            torch.cuda.empty_cache()
    # ratios against the original of the same model, precision and pass, compiled alike
    def key(r):
        return r["model"], r["precision"], r["pass"], r["variant"].startswith(COMPILED)

    base = {key(r): r for r in rows if r["variant"].removeprefix(COMPILED).startswith("original")}
    for r in rows:
        b = base.get(key(r))
        r["x original time"] = r["ms/step"] / b["ms/step"] if b else float("nan")
        r["x original GPU busy"] = r["GPU busy ms"] / b["GPU busy ms"] if b and "GPU busy ms" in r else float("nan")
        r["x original memory"] = r["peak GiB"] / b["peak GiB"] if b and "peak GiB" in r else float("nan")
    print("\nTraining step, batch 64, 224x224, channels_last, SGD (medians of CUDA-event timings)")
    print_table(rows, ["model", "variant", "precision", "ms/step", "images/s", "GPU busy ms", "peak GiB",
                       "x original time", "x original GPU busy", "x original memory", "note"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="window 17 only")
    ap.add_argument("--model", action="store_true",
                    help="also time training steps of convnext_tiny and resnet50, original vs each method")
    ap.add_argument("--methods", action="store_true",
                    help="also time each method's layer per engine at the stage shapes")
    ap.add_argument("--resnet-layers", action="store_true",
                    help="also time resnet50's 3x3 convs per method against the dense conv of the same window")
    ap.add_argument("--breakdown", action="store_true",
                    help="with --model: each variant's top GPU kernels and host ops (AMP bfloat16) from the profiler")
    ap.add_argument("--models", default="convnext_tiny,resnet50", help="with --model: which models")
    ap.add_argument("--variants", default="",
                    help="with --model: only these variants (';' between names, 'prefix*' for a family)")
    ap.add_argument("--passes", type=int, default=1, help="with --model: run every variant this many times")
    ap.add_argument("--layers-only", action="store_true", help="the per-layer table alone")
    ap.add_argument("--taps-only", action="store_true", help="per layer, the tap engine's own columns")
    ap.add_argument("--no-gather", action="store_true", help="per layer, skip the gather fallback")
    ap.add_argument("--new-arms", action="store_true",
                    help="only what no GPU has timed yet: per layer, the tensor-core arms (not the tile modes); "
                         "no stride-2 or construct tables")
    ap.add_argument("--json", default=None, help="write the per-layer rows to this file")
    ap.add_argument("--bf16-nchw", action="store_true", help="per layer, also bfloat16 rows not in channels_last")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"backend {ops.backend_info()['ops']['taps_conv']['cuda']}")
    fl = floors()
    print(f"floors: copy {fl['copy'] / 1e12:.2f} TB/s (read + written), float32 GEMM {fl['f32'] / 1e12:.1f} TFLOP/s, "
          f"bfloat16 GEMM {fl['bf16'] / 1e12:.0f} TFLOP/s")
    rows = run_layers(args.quick, fl, taps_only=args.taps_only, gather=not args.no_gather, new_arms=args.new_arms,
                      bf16_nchw=args.bf16_nchw)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(rows, f)
    if args.layers_only:
        return
    if not args.new_arms:  # both timed in the sixth session
        run_strided()
        run_construct()
    if args.methods:
        run_methods()
    if args.resnet_layers:
        run_resnet_layers()
    if args.model:
        run_model(args.breakdown, args.models.split(","), [v for v in args.variants.split(";") if v], args.passes)


if __name__ == "__main__":
    main()
