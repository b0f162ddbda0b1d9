"""The example scripts run end to end (reduced sizes)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_partial_conv1d_example(tmp_path):
    out = run("partial_conv1d.py", cwd=tmp_path)
    assert "101010101111101010101" in out and "converted output == original output: True" in out


def test_bloom_tutorial_example(tmp_path):
    pytest.importorskip("mlxtend")
    out = run("bloom_tutorial_net.py", "--epochs", "1", "--samples", "400", cwd=tmp_path)
    assert "least squares from trained 3x3" in out and "(7, 7) window, 9 weights" in out


def test_timm_convert_finetune(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("mlxtend")
    out = run("timm_convert_finetune.py", "--model", "convnext_atto", "--samples", "200", "--size", "32",
              "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert "test accuracy" in out and (tmp_path / "o" / "converted" / "recipe.json").exists()
