"""iformer-mm: iFormer backbones for mmdet, mmsegmentation and mmpretrain.

``import iformer_mm`` applies the stack compatibility fixes and registers
everything the package provides in mmengine's root registries, so configs
reach it with ``custom_imports = dict(imports=['iformer_mm'],
allow_failed_imports=False)`` under any of the mmdet, mmseg and mmpretrain
scopes.
"""
from .version import __version__
from . import compat  # noqa: F401  (stack fixes first)
from . import models  # noqa: F401
from . import datasets  # noqa: F401
from . import engine  # noqa: F401

__all__ = ['__version__']
