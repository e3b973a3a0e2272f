"""coremltools' TorchScript frontend under numpy >= 2.4.

coremltools 9.0 converts the traced ops ``aten::Int`` / ``aten::Float`` /
``aten::Bool`` (what ``x.shape[2] // 2``, ``int(...)`` and
``F.interpolate(size=...)`` become in a traced graph) by calling
``int(x.val)`` on a length-1 array. numpy 2.4 turned that long-deprecated
conversion of an ``ndim > 0`` array into a ``TypeError`` ("only
0-dimensional arrays can be converted to Python scalars"), so traced
conversion of any model with shape arithmetic fails; the ``torch.export``
path does not go through this op and works.

The fix replaces the frontend's ``_cast`` helper with one that takes the
single element out of the array first. It is applied lazily: nothing imports
coremltools on ``import iformer_mm``; a post-import hook patches the frontend
module when coremltools loads it (or at once if it is already loaded).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

import numpy as np

__all__ = ['patch_coremltools', 'install_coremltools_hook']

_TARGET = 'coremltools.converters.mil.frontend.torch.ops'
_MARK = '_iformer_mm_cast_patch'


def _make_cast(ops):
    mb = ops.mb
    get_inputs = ops._get_inputs

    def _cast(context, node, dtype, dtype_name):
        (x, ) = get_inputs(context, node, expected=1)
        if not all(d == 1 for d in x.shape):  # a scalar has shape ()
            raise ValueError(
                'input to cast must be either a scalar or a length 1 tensor')
        if x.can_be_folded_to_const():
            if isinstance(x.val, dtype):
                res = x
            else:
                # the one element of a (1, ..., 1) array, as a Python scalar
                scalar = np.asarray(x.val).reshape(()).item()
                res = mb.const(val=dtype(scalar), name=node.name)
        else:
            if len(x.shape) > 0:
                x = mb.squeeze(x=x, name=node.name + '_item')
            res = mb.cast(x=x, dtype=dtype_name, name=node.name)
        context.add(res, node.name)

    setattr(_cast, _MARK, True)
    _cast._iformer_mm_original = getattr(ops, '_cast', None)
    return _cast


def patch_coremltools(ops_module=None) -> bool:
    """Patch coremltools' torch frontend; returns whether it is patched.

    Idempotent. Does nothing (returns False) when coremltools is not
    installed or its frontend has no ``_cast`` helper of the known shape.
    """
    if ops_module is None:
        try:
            import importlib
            ops_module = importlib.import_module(_TARGET)
        except ImportError:
            return False
    current = getattr(ops_module, '_cast', None)
    if current is None or not hasattr(ops_module, '_get_inputs') or \
            not hasattr(ops_module, 'mb'):
        return False
    if getattr(current, _MARK, False):
        return True
    ops_module._cast = _make_cast(ops_module)
    return True


class _PatchingLoader(importlib.abc.Loader):

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        patch_coremltools(module)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Wraps the loader of the coremltools frontend module to patch it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install_coremltools_hook() -> None:
    """Patch now if coremltools' frontend is loaded, else when it loads."""
    if _TARGET in sys.modules:
        patch_coremltools(sys.modules[_TARGET])
        return
    if not any(isinstance(f, _PostImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportHook())
