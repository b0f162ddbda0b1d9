"""A training-time guard against NaN/Inf parameters that never stalls the GPU.

On the CPU the check is immediate. On CUDA a host read after every forward would wait for the device at each
layer, and even an asynchronous check costs the host a few kernel launches per layer (a converted ConvNeXt-T
training step on an H200 is bound by the host queueing its kernels), so the flag is computed every
CHECK_EVERY-th training forward, copied to pinned host memory without blocking, and read at a later forward of
the same module once the copy has landed: a diverged step is reported a few steps late, never silently.
"""
from __future__ import annotations

import weakref
from typing import Callable, Sequence

import torch

__all__ = ["check_finite", "CHECK_EVERY"]

CHECK_EVERY = 16


class _Check:
    def __init__(self, device: torch.device):
        self.device = device
        self.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        self.event = torch.cuda.Event()
        self.pending = False
        self.countdown = 1  # the first forward checks


# weak keys: deepcopy and pickling of the module never see this state
_STATE: "weakref.WeakKeyDictionary[torch.nn.Module, _Check]" = weakref.WeakKeyDictionary()


def check_finite(owner: torch.nn.Module, tensors: Sequence[torch.Tensor], error: Callable[[], Exception]) -> None:
    """Raise error() when a tensor of `tensors` holds NaN/Inf (CUDA: as found by an earlier call, without a sync)."""
    device = tensors[0].device
    # CPU, or a DataParallel replica (rebuilt at every forward, so a check issued now would never be read)
    if device.type != "cuda" or getattr(owner, "_is_replica", False):
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise error()
        return
    st = _STATE.get(owner)
    if st is None or st.device != device:  # first use, or the module moved to another GPU
        st = _STATE[owner] = _Check(device)
    if st.pending and st.event.query():
        st.pending = False
        if not bool(st.flag):  # a host tensor: no device read
            st.countdown = 1
            raise error()
    st.countdown -= 1
    if st.pending or st.countdown > 0:
        return
    st.countdown = CHECK_EVERY
    with torch.cuda.device(device):  # the copy and the event on the tensors' device's stream
        ok = torch.isfinite(tensors[0]).all()
        for t in tensors[1:]:
            ok = ok & torch.isfinite(t).all()
        st.flag.copy_(ok, non_blocking=True)
        st.event.record(torch.cuda.current_stream(device))
    st.pending = True
