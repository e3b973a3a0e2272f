"""Configs: the one reader, and the table of the codebases a config runs in.

A config belongs to mmdet, mmseg or mmpretrain by its ``default_scope``
(:data:`SCOPES`). :func:`load_config` reads one for every tool and API;
:func:`init_scope` imports its codebase, registers its modules (and ours)
and makes its scope the default. Nothing here imports a codebase until a
config of it is used.
"""
from __future__ import annotations

import ast
import copy
import importlib
import os
import os.path as osp
from typing import Any, Dict, Tuple, Union

from .errors import ConfigError, closest

#: ``default_scope`` -> (task, the codebase's package)
SCOPES: Dict[str, Tuple[str, str]] = {
    'mmdet': ('detection', 'mmdet'),
    'mmseg': ('segmentation', 'mmseg'),
    'mmpretrain': ('classification', 'mmpretrain'),
}


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """The config file does not exist."""


def _check_path(path: str) -> None:
    """A missing config (one line naming it and the closest file there) or
    one that is not valid Python."""
    if osp.isfile(path):
        if path.endswith('.py'):
            with open(path, encoding='utf-8') as f:
                source = f.read()
            try:
                ast.parse(source, filename=path)
            except SyntaxError as e:
                raise ConfigError(
                    f'config file {path!r} has a syntax error at line '
                    f'{e.lineno}: {e.msg}') from e
        return
    folder = osp.dirname(path) or '.'
    hit = closest(osp.basename(path), [
        f for f in os.listdir(folder) if f.endswith('.py')]) \
        if osp.isdir(folder) else []
    hint = f'did you mean {osp.join(osp.dirname(path), hit[0])!r}?' if hit \
        else 'pass the path of a config (.py), e.g. ' \
        'configs/toy/maskrcnn_iformer_t_toy.py'
    raise ConfigNotFoundError(f'config file not found: {path!r}; {hint}')


def load_config(config, cfg_options: Union[dict, None] = None):
    """Read a config file (or copy a ``Config``) and merge ``cfg_options``.

    Raises:
        ConfigNotFoundError: the file does not exist (the closest config
            file there is suggested).
    """
    from mmengine.config import Config
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        _check_path(str(config))
        cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def scope_of(cfg) -> str:
    """The codebase a config belongs to (its ``default_scope``)."""
    scope = cfg.get('default_scope', None)
    if scope not in SCOPES:
        raise ConfigError(
            f'the config has default_scope={scope!r}; iformer_mm runs '
            f'configs of {", ".join(SCOPES)} (detection, segmentation, '
            f'classification).')
    return scope


def task_of(cfg) -> str:
    """``'detection'``, ``'segmentation'`` or ``'classification'``."""
    return SCOPES[scope_of(cfg)][0]


def init_scope(cfg_or_scope, set_default: bool = True) -> str:
    """Import the codebase of a config (or scope name), register its modules
    and ours and the config's ``custom_imports``; make its scope the
    default unless ``set_default`` is False. Returns the scope."""
    scope = cfg_or_scope if isinstance(cfg_or_scope, str) else \
        scope_of(cfg_or_scope)
    if scope not in SCOPES:
        raise ConfigError(f'unknown scope {scope!r}; one of '
                          f'{", ".join(SCOPES)}')
    # ours are registered: importing this module ran iformer_mm/__init__
    package = SCOPES[scope][1]
    try:
        utils = importlib.import_module(f'{package}.utils')
    except ImportError as e:
        raise ConfigError(
            f'the config needs {package} ({scope}), which cannot be imported '
            f'({e}); install it (python tools/install.py).') from e
    utils.register_all_modules(init_default_scope=False)
    custom = None if isinstance(cfg_or_scope, str) else \
        cfg_or_scope.get('custom_imports', None)
    if custom:
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**custom)
    if set_default:
        from mmengine.registry import init_default_scope
        init_default_scope(scope)
    return scope


def strip_pretrained(node: Any) -> None:
    """Drop every ``init_cfg`` of type ``Pretrained`` (and mmdet/mmseg's
    ``pretrained=`` shortcut) in a model config, in place, so that nothing
    is downloaded."""
    if isinstance(node, dict):
        init_cfg = node.get('init_cfg', None)
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            node['init_cfg'] = None
        elif isinstance(init_cfg, (list, tuple)):
            node['init_cfg'] = [
                c for c in init_cfg if not (
                    isinstance(c, dict) and c.get('type') == 'Pretrained')
            ] or None
        if isinstance(node.get('pretrained', None), str):
            node['pretrained'] = None
        for key, value in node.items():
            if key != 'init_cfg':
                strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            strip_pretrained(value)


def innermost_dataset(ds_cfg: dict) -> dict:
    """Unwrap ``RepeatDataset``/``ClassBalancedDataset``-style wrappers."""
    while isinstance(ds_cfg, dict) and isinstance(
            ds_cfg.get('dataset', None), dict):
        ds_cfg = ds_cfg['dataset']
    return ds_cfg


__all__ = ['SCOPES', 'ConfigNotFoundError', 'load_config', 'scope_of',
           'task_of', 'init_scope', 'strip_pretrained', 'innermost_dataset']
