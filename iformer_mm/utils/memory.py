"""Deterministic activation-memory accounting on any device.

:class:`TensorMemoryTracker` watches every tensor an operator returns inside
the block and counts its storage once while any tensor still refers to it.
``peak_bytes`` is the largest sum of such storages alive at once (peak
activation memory, weights excluded); ``allocated_bytes`` is the sum of all
storages created (how many bytes the forward writes, a proxy for memory
traffic: window partition/reverse copies show up here). Unlike the process's
resident set, neither depends on the allocator or on other processes.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemoryTracker(TorchDispatchMode):
    """``with TensorMemoryTracker() as mem: model(x)``, then ``mem.peak_bytes``."""

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.allocated_bytes = 0
        self._refs: dict = {}

    def _release(self, key: int, nbytes: int) -> None:
        left = self._refs.get(key, 0) - 1
        if left > 0:
            self._refs[key] = left
            return
        self._refs.pop(key, None)
        self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key not in self._refs:
                self._refs[key] = 0
                self.live_bytes += nbytes
                self.allocated_bytes += nbytes
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            self._refs[key] += 1
            weakref.finalize(t, self._release, key, nbytes)
        return out
