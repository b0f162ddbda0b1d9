"""What a build of the extension depends on, as one line: a hash of the sources it compiles (kernels/ and
setup.py), the Python tag, the torch version and the CUDA architectures. benchmarks/prebuild_device.sh writes it
beside an extension built here for the device's Python and torch; benchmarks/run_gpu.sh computes it there and uses
that extension only where the two lines are equal, so a stale or mismatched build is never run (it builds instead).

    python benchmarks/build_stamp.py [--arch 9.0]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_files(root: str = ROOT) -> list[str]:
    """The files a build compiles or configures from, relative to root, sorted (not kernels/emulation: the tests'
    CPU emulation, never part of the extension)."""
    files = ["setup.py"]
    for base, dirs, names in os.walk(os.path.join(root, "kernels")):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (base == os.path.join(root, "kernels")
                                                                          and d == "emulation"))
        for name in names:
            if name.endswith((".h", ".cuh", ".cpp", ".cu")):
                files.append(os.path.relpath(os.path.join(base, name), root))
    return sorted(files)


def sources_hash(root: str = ROOT) -> str:
    h = hashlib.sha256()
    for rel in source_files(root):
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()[:16]


def stamp(arch: str, root: str = ROOT) -> str:
    import torch

    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"sources={sources_hash(root)} python={py} torch={torch.__version__} arch={arch}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"))
    print(stamp(ap.parse_args().arch))


if __name__ == "__main__":
    main()
