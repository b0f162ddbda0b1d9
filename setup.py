"""Builds dcls_convert._C from kernels/: the CPU ops always, the CUDA ops when a CUDA-enabled torch and a
CUDA toolkit are present. DCLS_CONVERT_CUDA=1 forces CUDA on (fail if impossible), =0 forces it off.
DCLS_CONVERT_NATIVE=0 builds for a portable CPU baseline instead of this machine's CPU.
Install with `pip install --no-build-isolation .` so the build uses the torch already installed."""
import glob
import os
import shutil
import subprocess

from setuptools import setup


def _find_cuda_home():
    """The real toolkit: CUDA_HOME if set, else the TOP that `nvcc --dryrun` reports (the nvcc on PATH may
    be a wrapper script, which defeats torch's own guess from the nvcc path)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return os.path.realpath(line.split("=", 1)[1].strip())
    return None


def _want_cuda(cuda_home):
    import torch

    flag = os.environ.get("DCLS_CONVERT_CUDA", "").strip()
    if flag == "0":
        return False
    available = torch.version.cuda is not None and cuda_home is not None
    if flag == "1" and not available:
        raise RuntimeError(f"DCLS_CONVERT_CUDA=1 but torch.version.cuda={torch.version.cuda}, toolkit={cuda_home}")
    return available


def _extension():
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read when cpp_extension is imported
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = (["kernels/registration.cpp", "kernels/autograd.cpp"]
               + sorted(glob.glob("kernels/cpu/*.cpp", root_dir=here)))
    # -march=native: the extension is built from source on the machine that runs it (AVX2/FMA for the tap
    # engine's row kernels). DCLS_CONVERT_NATIVE=0 builds for the x86-64 baseline (portable, slower).
    cxx = ["-O3", "-fopenmp"] + (["-march=native"] if os.environ.get("DCLS_CONVERT_NATIVE", "1") != "0" else [])
    debug = os.environ.get("DEBUG") == "1"
    if debug:
        cxx = ["-O0", "-g"]
    include_dirs = [os.path.join(here, "kernels", "include")]
    use_cuda = _want_cuda(cuda_home)
    # With a GPU visible, cpp_extension builds for it. Without one (CI, build hosts) pick Turing, Ampere and
    # Hopper (+PTX for newer chips) unless the user chose architectures; sm_75 keeps T4s working.
    if use_cuda and not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "7.5;8.0;9.0+PTX")
    print(f"dcls_convert build: cuda={use_cuda} CUDA_HOME={cuda_home} debug={debug} "
          f"arch={os.environ.get('TORCH_CUDA_ARCH_LIST', 'visible GPU') if use_cuda else '-'}")
    if use_cuda:
        sources += sorted(glob.glob("kernels/cuda/*.cu", root_dir=here))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension("dcls_convert._C", sources, include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    return CppExtension("dcls_convert._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx})


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


setup(ext_modules=[_extension()], cmdclass={"build_ext": _build_ext()})
