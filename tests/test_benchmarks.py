"""The GPU benchmark's tables build: device time is short and rare, so a Python error in benchmarks/bench_gpu.py
must show here, not on the card. Timings are stubbed and the layers run small on CPU; nothing here measures."""
import os
import sys

import pytest
import torch

from helpers import requires_compiled

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@requires_compiled
@pytest.mark.parametrize("plane_off", [False, True])
def test_bench_gpu_layer_table_builds(monkeypatch, capsys, plane_off):
    """plane_off: run_gpu.sh's DCLS_CONVERT_CUDA_PLANE=none after a smoke fault, kept through every arm."""
    import bench_gpu

    if plane_off:
        monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", "none")
        monkeypatch.setattr(bench_gpu, "PLANE_OFF", True)
    else:
        monkeypatch.delenv("DCLS_CONVERT_CUDA_PLANE", raising=False)

    def cpu_inputs(shape, dtype, channels_last, window, K, on_grid, seed=0):
        g = torch.Generator().manual_seed(seed)
        N, C, H, W = shape
        x = torch.randn(N, C, H, W, generator=g).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        w = (torch.randn(C, 1, K, generator=g) * 0.1).to(dtype)
        return x, w, (torch.rand(2, C, 1, K, generator=g) - 0.5) * (window - 1)

    modes_seen = []

    mma_seen = []
    tf32_seen = []
    plane_seen = []

    def kernel_time(fns, **_):
        plane_seen.append((os.environ.get("DCLS_CONVERT_CUDA_PLANE"), tuple(sorted(fns))))
        modes_seen.append(os.environ.get("DCLS_CONVERT_CUDA_TILES"))
        mma_seen.append(os.environ.get("DCLS_CONVERT_CUDA_MMA"))
        tf32_seen.append((os.environ.get("DCLS_CONVERT_CUDA_TF32"), tuple(fns)))
        return {k: (fn(), 0.5)[1] for k, fn in fns.items()}

    monkeypatch.setattr(bench_gpu, "STAGES", [(2, 8, 14, 14)])
    monkeypatch.setattr(bench_gpu, "layer_inputs", cpu_inputs)
    monkeypatch.setattr(bench_gpu, "cuda_time", lambda fns, **_: {k: (fn(), 1.0)[1] for k, fn in fns.items()})
    monkeypatch.setattr(bench_gpu, "kernel_time", kernel_time)
    rows = bench_gpu.run_layers(quick=True, fl={"copy": 1e12, "f32": 5e13, "bf16": 7e14}, taps_only=True,
                                gather=False)
    assert [r["dtype"] for r in rows] == ["fp32 NCHW", "bf16 CL"]
    # every A/B arm ran with its switch set, and left it unset
    assert set(modes_seen) == {None, "first", "direct", "one-load", "fitted-cl", "unpaired", "runtime-pitch"}
    assert "DCLS_CONVERT_CUDA_TILES" not in os.environ
    for col in ("GPU fwd", "GPU first-tiles fwd+bwd", "GPU one-load fwd+bwd", "GPU fitted-cl fwd+bwd",
                "GPU unpaired on-grid fwd", "GPU runtime-pitch fwd+bwd", "GPU mma fwd", "GPU mma dgrad",
                "GPU mma wgrad", "GPU mma fwd+bwd", "GPU tables fwd", "GPU tables wgrad", "GPU tables on-grid wgrad",
                "GPU mma on-grid wgrad", "GPU on-grid wgrad", "GPU mma band-8 fwd+bwd"):
        assert col in rows[1] and rows[1][col] == 0.5, col
    # the tensor-core arms (16-bit rows only), each part alone, all together and none, and the switch left unset
    assert set(mma_seen) == {None, "all", "corr", "conv", "none"}
    assert "DCLS_CONVERT_CUDA_MMA" not in os.environ
    # float32 on tensor cores (3xTF32, DCLS_CONVERT_CUDA_TF32=all): the float32 row's every part, then its
    # correlation on rows (DCLS_CONVERT_CUDA_PLANE=none), the switches left unset
    assert [sorted(k) for e, k in tf32_seen if e] == [["dgrad", "fwd", "fwd+bwd", "on-grid wgrad", "wgrad"], ["wgrad"]]
    assert {e for e, _ in tf32_seen if e} == {"all"}
    assert [p for (p, _), (t, _) in zip(plane_seen, tf32_seen) if t] == ["none" if plane_off else None, "none"]
    assert "DCLS_CONVERT_CUDA_TF32" not in os.environ
    assert rows[0]["GPU tf32 wgrad"] == rows[0]["GPU tf32 fwd"] == rows[0]["GPU tf32 dgrad"] == 0.5
    assert rows[0]["GPU tf32 rows wgrad"] == 0.5
    # the small-plane products (14 x 14 fits): the bfloat16 row's every part, the switch left unset
    if plane_off:  # no arm ran the small-plane kernels, and the switch stayed set
        assert {e for e, _ in plane_seen} == {"none"} and os.environ["DCLS_CONVERT_CUDA_PLANE"] == "none"
        return
    assert [k for e, k in plane_seen if e == "all"] == [("dgrad", "fwd", "fwd+bwd", "on-grid fwd", "on-grid wgrad",
                                                         "wgrad")]
    assert "DCLS_CONVERT_CUDA_PLANE" not in os.environ and rows[1]["GPU plane fwd+bwd"] == 0.5
    assert rows[0]["GPU plane fwd"] != rows[0]["GPU plane fwd"]  # (float32: NaN, not timed)
    assert "GPU one-load fwd" in capsys.readouterr().out  # the table, and each row as it was measured
    # --new-arms: no tile-mode arm (all timed); the others' columns stay, empty
    modes_seen.clear()
    rows = bench_gpu.run_layers(quick=True, fl={"copy": 1e12, "f32": 5e13, "bf16": 7e14}, taps_only=True,
                                gather=False, new_arms=True)
    assert set(modes_seen) == {None}
    assert rows[1]["GPU mma fwd+bwd"] == 0.5 and rows[1]["GPU first-tiles fwd"] != rows[1]["GPU first-tiles fwd"]
    # --bf16-nchw: bfloat16 rows not in channels_last too
    rows = bench_gpu.run_layers(quick=True, fl={"copy": 1e12, "f32": 5e13, "bf16": 7e14}, taps_only=True,
                                gather=False, new_arms=True, bf16_nchw=True)
    assert [r["dtype"] for r in rows] == ["fp32 NCHW", "bf16 CL", "bf16 NCHW"]


def test_bench_gpu_model_variants_include_tensor_cores():
    """The model table's tensor-core rows (DCLS_CONVERT_CUDA_MMA=all while they run), tables rows, float32 3xTF32
    rows (DCLS_CONVERT_CUDA_TF32=all), small-plane rows (DCLS_CONVERT_CUDA_PLANE=all) and tuned rows
    (DCLS_CONVERT_CUDA_TUNE=on) exist for every method, named so that --variants "dcls K*" picks the six dcls rows."""
    import bench_gpu

    names = list(bench_gpu._variants("convnext_tiny"))
    for base in ("dcls K=34 w17 shared", "partial", "bloom"):
        assert all(base + v in names
                   for v in ("", bench_gpu.MMA, bench_gpu.TABLES, bench_gpu.TF32, bench_gpu.PLANE,
                         bench_gpu.TUNED))
    dcls = "dcls K=34 w17 shared"
    assert [n for n in names if n.startswith("dcls K")] == [dcls, dcls + bench_gpu.MMA, dcls + bench_gpu.TABLES,
                                                             dcls + bench_gpu.TF32,
                                                             dcls + bench_gpu.PLANE, dcls + bench_gpu.TUNED]
    assert "dcls, positions off grid" + bench_gpu.PLANE in names
    # the compiled rows (CUDA graphs), each against the original compiled alike; --variants "dcls K*" skips them
    assert all(bench_gpu.COMPILED + v in names for v in ("original", dcls, "partial", "bloom"))
    assert all(bench_gpu.COMPILED + v + bench_gpu.PLANE in names for v in (dcls, "partial", "bloom"))
    assert all(bench_gpu.COMPILED + v + bench_gpu.TUNED in names for v in (dcls, "partial", "bloom"))


def test_fit_cost_rule_recovers_a_power_law(tmp_path, capsys, monkeypatch):
    """benchmarks/fit_cost_rule.py reads bench_gpu.py's --json rows: per-stage timings made from a known rule (the
    tables linear in their entries; the tensor cores meeting them at 40 (3136 / plane)^0.5 entries in the forward,
    at 30 (3136 / plane)^0.4 in the correlation) give back those constants; float32 rows and other windows are
    not read."""
    import json
    import math

    import fit_cost_rule as fit

    rows = []
    for side in (56, 28, 14, 7):
        plane = side * side
        conv_be, corr_be = 40 * (3136 / plane) ** 0.5, 30 * (3136 / plane) ** 0.4
        a, b = 0.05, 0.002  # the tables' forward: a + b * entries
        tables_wgrad = 0.3
        rows.append({"shape": f"64x96x{side}x{side}", "L": 17, "dtype": "bf16 CL",
                     "GPU tables on-grid fwd": a + b * 34, "GPU tables fwd": a + b * 136, "GPU mma fwd": a + b * conv_be,
                     "GPU tables wgrad": tables_wgrad, "GPU mma wgrad": tables_wgrad * corr_be / 136})
        if side <= 14:  # the small-plane arm: a fixed 0.02 ms forward; forward+backward 0.8 of the default's
            rows[-1].update({"GPU plane fwd": 0.02, "GPU plane on-grid fwd": 0.02, "GPU plane fwd+bwd": 0.4,
                             "GPU fwd+bwd": 0.5, "GPU fwd": 0.05, "GPU plane wgrad": 0.03, "GPU wgrad": 0.12})
            rows[-1].update({"GPU tuned fwd+bwd": 0.35, "tuned paths": "plane/plane/plane"})
        rows.append({**rows[-1], "dtype": "fp32 NCHW", "GPU mma fwd": float("nan"), "GPU wgrad": 0.4,
                     "GPU tf32 wgrad": 0.1 * side / 7, "GPU fwd": 0.2, "GPU tf32 fwd": 0.1,
                     "GPU tf32 rows wgrad": 0.2})
        rows.append({**rows[-2], "L": 31, "GPU mma fwd": 1.0})
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(rows))
    points = fit.break_evens(rows)
    assert [p for p, _ in points["conv"]] == [3136, 784, 196, 49]
    for part, (A, B) in (("conv", (40, 0.5)), ("corr", (30, 0.4))):
        a, b = fit.power_fit([(3136 / p, e) for p, e in points[part]])
        assert abs(a - A) < 1e-6 * A and abs(b - B) < 1e-9
    monkeypatch.setattr(sys, "argv", ["fit_cost_rule.py", str(path)])
    fit.main()
    out = capsys.readouterr().out
    assert "fit: 40.0 (3136 / plane)^0.50" in out and "fit: 30.0 (3136 / plane)^0.40" in out
    ratios = fit.tf32_ratios(rows)
    assert [p for p, _ in ratios] == [3136, 784, 196, 49]
    assert all(abs(q - 0.25 * math.isqrt(p) / 7) < 1e-12 for p, q in ratios)
    assert "56x56: 2.00" in out and "7x7: 0.25" in out
    assert [q for _, q in fit.tf32_ratios(rows, "fwd")] == [0.5] * 4
    assert [q for _, q in fit.tf32_ratios(rows, "wgrad", "tf32 rows")] == [0.5] * 4
    assert "float32 weight+position gradient on rows, 3xTF32" in out
    assert "float32 forward, 3xTF32 tensor cores / the default" in out
    assert "float32 input gradient" not in out  # no row timed it
    planes = fit.plane_ratios(rows)
    assert [p for p, *_ in planes] == [196, 49]
    assert all(abs(off - 0.02 / 0.322) < 1e-12 and abs(on - 0.02 / 0.118) < 1e-12 and abs(fwd - 0.4) < 1e-12
               and abs(wgrad - 0.25) < 1e-12 and abs(total - 0.8) < 1e-12 for _, off, on, fwd, wgrad, total in planes)
    assert "14x14: 0.06 / 0.17; 0.40; 0.25; 0.80" in out
    # where they win at every measured stage up to a plane: plane_wanted's default could cover it
    assert fit.plane_rule(planes) == {"conv": 196, "corr": 196}
    assert "suggested plane_wanted default for corr: planes up to 196 pixels" in out
    # a loss at 7 x 7 stops the rule there, whatever larger planes do
    assert fit.plane_rule([(49, 1, 1, 1.2, 0.5, 1), (196, 1, 1, 0.5, 1.5, 1)]) == {"conv": 0, "corr": 49}
    # the paths tuning picked, and its forward+backward against the default's (window 17; the float32 rows copy them)
    assert [r for r in fit.tuned_rows(rows) if r[1] == "bf16 CL"] == [("64x96x14x14", "bf16 CL", "plane/plane/plane", 0.35 / 0.5),
                                    ("64x96x7x7", "bf16 CL", "plane/plane/plane", 0.35 / 0.5)]
    assert "64x96x7x7 bf16 CL: plane/plane/plane; 0.70" in out


def test_build_stamp_follows_the_sources(tmp_path):
    """A prebuilt extension is run on the device only where the stamp matches: it must change with any compiled
    source or setup.py, and not with files a build does not read."""
    import build_stamp

    (tmp_path / "kernels" / "cuda").mkdir(parents=True)
    (tmp_path / "kernels" / "include").mkdir()
    (tmp_path / "setup.py").write_text("setup()\n")
    (tmp_path / "kernels" / "cuda" / "a.cu").write_text("__global__ void k() {}\n")
    (tmp_path / "kernels" / "include" / "b.h").write_text("#pragma once\n")
    assert build_stamp.source_files(str(tmp_path)) == ["kernels/cuda/a.cu", "kernels/include/b.h", "setup.py"]
    first = build_stamp.sources_hash(str(tmp_path))
    assert build_stamp.sources_hash(str(tmp_path)) == first
    (tmp_path / "kernels" / "notes.txt").write_text("not compiled\n")
    (tmp_path / "kernels" / "emulation").mkdir()
    (tmp_path / "kernels" / "emulation" / "emulate.cpp").write_text("// the tests' emulation, not in the build\n")
    assert build_stamp.sources_hash(str(tmp_path)) == first
    (tmp_path / "kernels" / "include" / "b.h").write_text("#pragma once\n// changed\n")
    second = build_stamp.sources_hash(str(tmp_path))
    assert second != first
    (tmp_path / "setup.py").write_text("setup(name='x')\n")
    assert build_stamp.sources_hash(str(tmp_path)) != second
    line = build_stamp.stamp("9.0", str(tmp_path))
    assert line.startswith(f"sources={build_stamp.sources_hash(str(tmp_path))} python=cp") and line.endswith(" arch=9.0")


@requires_compiled
def test_sanitize_planes_runs(monkeypatch):
    """benchmarks/sanitize_planes.py is run under compute-sanitizer on a GPU machine: a Python error there would
    waste the call. On CPU both of its paths are the CPU engine's, so they agree exactly, and the whole run (every
    16-bit and float32 case) exits normally."""
    import sanitize_planes

    assert sanitize_planes.run_case(sanitize_planes.CASES[0], "cpu", torch.bfloat16) == 0.0
    assert sanitize_planes.run_case(sanitize_planes.FLOAT_CASES[0], "cpu", torch.float32) == 0.0
    monkeypatch.setattr(sys, "argv", ["sanitize_planes.py", "--device", "cpu"])
    sanitize_planes.main()  # (sys.exit(2 or 3) on a disagreement or an exception)
