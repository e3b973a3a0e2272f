"""iformer-mm: iFormer backbones for mmdet, mmsegmentation and mmpretrain.

``import iformer_mm`` applies the stack compatibility fixes and registers
everything the package provides in mmengine's root registries, so configs
reach it with ``custom_imports = dict(imports=['iformer_mm'],
allow_failed_imports=False)`` under any of the mmdet, mmseg and mmpretrain
scopes.

It needs only torch and mmengine: mmcv, mmdet, mmseg and mmpretrain are
imported when a config of theirs is used (the light install,
``pip install ".[deploy]"``, has none of them). Without mmengine nothing can
be registered; the import then still works, so that
``python -m iformer_mm.check`` can say what is missing.
"""
import importlib.util as _util

from .version import __version__

if _util.find_spec('mmengine') is not None:
    from . import compat  # noqa: F401  (stack fixes first)
    from . import models  # noqa: F401
    from . import datasets  # noqa: F401
    from . import engine  # noqa: F401

__all__ = ['__version__', 'get_config', 'get_model', 'list_models',
           'model_info']


def __getattr__(name):
    # models by name (model-index.yml): imported on first use
    if name in ('get_config', 'get_model', 'list_models', 'model_info'):
        from .apis import hub
        return getattr(hub, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
