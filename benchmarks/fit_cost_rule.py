"""Refit the tensor cores' cost rule (`mma_break_even` in kernels/include/dcls_convert/tiled_taps_host.h) from a
GPU run's per-layer rows: `python benchmarks/fit_cost_rule.py layers.json`, where layers.json is what
`bench_gpu.py --json layers.json` wrote (its bfloat16 channels_last rows at window 17, the four ConvNeXt-T stage
planes, with the tables' and the tensor cores' arms timed: run it without --new-arms, or with arms not yet timed).

The rule runs a 16-bit part on tensor cores where the tables' entry bound (4K bilinear) reaches a break-even count
that grows as planes shrink, about A (3136 / plane)^B. Per stage this script reads the break-even from the timings:
- forward (and input gradient, the same kernels): the tables' cost is linear in its entries, through the on-grid
  (K entries) and off-grid (4K) timings; the break-even is where that line meets the tensor cores' time, which does
  not depend on the entries;
- weight and position gradients: the tables' correlation costs about the same on grid and off (both rows of every
  tap are kept for the position gradient), so its cost is taken as proportional to the entries, 4K measured: the
  break-even is 4K x (tensor cores / tables).
Then A and B by least squares on the logarithms, with the rule's current constants beside them. The output is a
suggestion: read it with the per-stage figures, which decide in the end. For float32 rows it prints the opt-in
3xTF32 kernels (DCLS_CONVERT_CUDA_TF32=all: the correlation on small planes or rows, the forward and input
gradient in strips; and the correlation on rows alone, "tf32 rows")
against the tables' per stage and part: where they win, they can become float32's default there. For the planes the small-plane products cover (56 x 56 and 28 x 28 in strips,
14 x 14, 7 x 7) it prints their times against the tables' and the default's (DCLS_CONVERT_CUDA_PLANE=all, opt-in
until timed), and per part the planes up to which they win at every stage (plane_wanted's default). Last, per row, the
paths tuning picked on the card (forward / input gradient / weight and position gradients; DCLS_CONVERT_CUDA_TUNE=on)
and its forward+backward against the default's: where the picks differ from what the rule runs, the rule is the one
to change.
"""
from __future__ import annotations

import json
import math
import sys

CURRENT = {"conv": (53.0, 0.45), "corr": (12.0, 0.6)}  # mma_wanted's constants
K = 34  # bench_gpu.py's taps per channel


def power_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """A and B of y = A x^B by least squares on (log x, log y); points (x, y) with y > 0."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    return math.exp(my - b * mx), b


def break_evens(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out = {"conv": [], "corr": []}
    for r in rows:
        if r.get("dtype") != "bf16 CL" or r.get("L") != 17:
            continue
        _, _, h, w = (int(v) for v in r["shape"].split("x"))
        plane = h * w
        on, off, mma = r.get("GPU tables on-grid fwd"), r.get("GPU tables fwd"), r.get("GPU mma fwd")
        if all(isinstance(v, float) and math.isfinite(v) for v in (on, off, mma)):
            slope = (off - on) / (4 * K - K)
            # tables never slower (flat or falling with entries) -> no break-even within reach
            out["conv"].append((plane, (mma - (on - slope * K)) / slope if slope > 0 else math.inf))
        tables, mma = r.get("GPU tables wgrad"), r.get("GPU mma wgrad")
        if all(isinstance(v, float) and math.isfinite(v) for v in (tables, mma)):
            out["corr"].append((plane, 4 * K * mma / tables))
    return out


def tf32_ratios(rows: list[dict], part: str = "wgrad", arm: str = "tf32") -> list[tuple[int, float]]:
    """(plane, 3xTF32 / the default's) for part ("wgrad": the correlation; "fwd", "dgrad": the strips) of the
    float32 rows at window 17 that timed both (the default's input gradient: its tables' arm); arm "tf32 rows":
    the correlation on rows where the small planes' would run."""
    out = []
    for r in rows:
        tf32, default = r.get(f"GPU {arm} {part}"), r.get(f"GPU {part}", r.get(f"GPU tables {part}"))
        if r.get("dtype") == "fp32 NCHW" and r.get("L") == 17 and all(
                isinstance(v, float) and math.isfinite(v) for v in (tf32, default)):
            _, _, h, w = (int(v) for v in r["shape"].split("x"))
            out.append((h * w, tf32 / default))
    return out


def plane_ratios(rows: list[dict]) -> list[tuple[int, float, float, float, float, float]]:
    """(plane, small-plane forward / tables' off grid, the same on grid, small-plane forward / the default's,
    small-plane weight gradient / the default's, its forward+backward / the default's) for the bfloat16
    channels_last rows at window 17 that timed the 'plane' arm (DCLS_CONVERT_CUDA_PLANE=all: window_plane.h and
    window_plane_corr.h)."""
    out = []
    for r in rows:
        vals = [r.get(k) for k in ("GPU plane fwd", "GPU tables fwd", "GPU plane on-grid fwd",
                                   "GPU tables on-grid fwd", "GPU fwd", "GPU plane wgrad", "GPU wgrad",
                                   "GPU plane fwd+bwd", "GPU fwd+bwd")]
        if r.get("dtype") == "bf16 CL" and r.get("L") == 17 and all(
                isinstance(v, float) and math.isfinite(v) for v in vals):
            _, _, h, w = (int(v) for v in r["shape"].split("x"))
            out.append((h * w, vals[0] / vals[1], vals[2] / vals[3], vals[0] / vals[4], vals[5] / vals[6],
                        vals[7] / vals[8]))
    return out


def plane_rule(planes) -> dict[str, int]:
    """Per part ('conv': forward and input gradient; 'corr': weight and position gradients), the largest plane
    (pixels) up to which the small-plane kernels beat the default at every measured stage: plane_wanted's default
    for that part could cover planes up to it (0: none)."""
    out = {}
    for part, col in (("conv", 3), ("corr", 4)):
        most = 0
        for p in sorted(r[0] for r in planes):
            if next(r[col] for r in planes if r[0] == p) >= 1:
                break
            most = p
        out[part] = most
    return out


def tuned_rows(rows: list[dict]) -> list[tuple[str, str, str, float]]:
    """(shape, dtype, the paths tuning picked, its forward+backward / the default's) for the rows that ran the
    'tuned' arm."""
    out = []
    for r in rows:
        tuned, default = r.get("GPU tuned fwd+bwd"), r.get("GPU fwd+bwd")
        if r.get("L") == 17 and "tuned paths" in r and all(
                isinstance(v, float) and math.isfinite(v) for v in (tuned, default)):
            out.append((r["shape"], r["dtype"], r["tuned paths"], tuned / default))
    return out


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        rows = json.load(f)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    for part, points in break_evens(rows).items():
        print(f"{part}: break-even entries per stage plane (the tables' bound at K={K} is {4 * K})")
        for plane, e in sorted(points, reverse=True):
            a, b = CURRENT[part]
            print(f"  {int(math.sqrt(plane))}x{int(math.sqrt(plane))}: measured {e:.0f}, "
                  f"current rule {a * (3136 / plane) ** b:.0f}")
        finite = [(3136 / p, e) for p, e in points if 0 < e < math.inf]
        if len(finite) >= 2:
            a, b = power_fit(finite)
            print(f"  fit: {a:.1f} (3136 / plane)^{b:.2f}   (current: {CURRENT[part][0]} (3136 / plane)^{CURRENT[part][1]})")
        else:
            print("  fit: too few finite break-evens")
    for part, arm, what in (("wgrad", "tf32", "weight+position gradient (small planes up to 32 columns, else rows)"),
                            ("wgrad", "tf32 rows", "weight+position gradient on rows"), ("fwd", "tf32", "forward"),
                            ("dgrad", "tf32", "input gradient")):
        ratios = tf32_ratios(rows, part, arm)
        if ratios:
            print(f"float32 {what}, 3xTF32 tensor cores / the default (the tables; below 1: tensor cores faster)")
            for plane, q in sorted(ratios, reverse=True):
                print(f"  {int(math.sqrt(plane))}x{int(math.sqrt(plane))}: {q:.2f}")
    planes = plane_ratios(rows)
    if planes:
        print("small planes (DCLS_CONVERT_CUDA_PLANE=all): forward / tables' forward, off grid and on grid; forward / "
              "the default's; weight gradient / the default's; forward+backward / the default's (below 1: make them "
              "the default there)")
        for plane, off, on, fwd, wgrad, total in sorted(planes, reverse=True):
            print(f"  {int(math.sqrt(plane))}x{int(math.sqrt(plane))}: {off:.2f} / {on:.2f}; {fwd:.2f}; {wgrad:.2f}; "
                  f"{total:.2f}")
        for part, most in plane_rule(planes).items():
            where = f"planes up to {most} pixels" if most else "no measured plane"
            print(f"  suggested plane_wanted default for {part}: {where} (every smaller stage measured wins too)")
    tuned = tuned_rows(rows)
    if tuned:
        print("tuning (DCLS_CONVERT_CUDA_TUNE=on): paths picked (forward / input gradient / weight+position "
              "gradients) and forward+backward / the default's (below 1: the rule leaves time on the table)")
        for shape, dtype, paths, q in tuned:
            print(f"  {shape} {dtype}: {paths}; {q:.2f}")


if __name__ == "__main__":
    main()
