import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import HealthCheck, settings

# Deterministic property tests in CI: derandomized examples, no deadline on a shared 2-core machine.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))



def pytest_report_header(config):
    import dcls_convert

    info = dcls_convert.backend_info()
    ops = ", ".join(f"{op}: cpu={v['cpu']}, cuda={v['cuda']}" for op, v in info["ops"].items())
    return [f"dcls_convert backends: compiled_library={info['compiled_library']} ({info['load_error'] or 'loaded'}); {ops}"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cuda_context_alive(request):
    """A test that faults on the GPU (an illegal address leaves the process's CUDA context unusable) ends its
    process: under pytest-xdist the worker is replaced, so the crash names its test and later tests run in a fresh
    context instead of all failing; without xdist the run stops there and says why."""
    yield
    if not torch.cuda.is_initialized():
        return
    try:
        torch.cuda.synchronize()
    except Exception as exc:  # (torch.AcceleratorError, a RuntimeError: "CUDA error: ...")
        message = f"CUDA context unusable after {request.node.nodeid}: {exc}"
        if os.environ.get("PYTEST_XDIST_WORKER"):
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
            os._exit(70)
        pytest.exit(message, returncode=70)
