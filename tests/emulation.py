"""The CPU emulation of the CUDA kernels (kernels/emulation/), built for the tests only: it is never part of the
shipped dcls_convert._C. The first build takes about 40 s on 2 cores; later runs reuse build/emulation/."""
import functools
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def emulation_ops():
    """torch.ops.dcls_convert_emulation: the CUDA kernels' per-thread and per-block functions driven on CPU."""
    from torch.utils.cpp_extension import load

    build = os.path.join(ROOT, "build", "emulation")
    os.makedirs(build, exist_ok=True)
    load(name="dcls_convert_emulation", sources=[os.path.join(ROOT, "kernels", "emulation", "emulate_cuda.cpp")],
         extra_include_paths=[os.path.join(ROOT, "kernels", "include")], extra_cflags=["-O1"], build_directory=build,
         is_python_module=False, verbose=False)
    return torch.ops.dcls_convert_emulation
