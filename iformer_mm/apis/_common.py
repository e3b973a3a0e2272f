"""Config helpers shared by the benchmark and demo tools.

Everything here is light: the task library (mmdet, mmseg or mmpretrain) is
imported only when a config that needs it is loaded, so ``import
iformer_mm.apis`` costs nothing.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os.path as osp
from typing import Any, Dict, Optional, Tuple, Union

from mmengine.config import Config

from ..errors import ConfigError

#: ``default_scope`` of a config -> (task name, the library's package).
TASKS: Dict[str, Tuple[str, str]] = {
    'mmdet': ('detection', 'mmdet'),
    'mmseg': ('segmentation', 'mmseg'),
    'mmpretrain': ('classification', 'mmpretrain'),
}


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """The config file does not exist."""


def load_config(config: Union[str, Config],
                cfg_options: Optional[dict] = None) -> Config:
    """Read a config file with the tools' one config reader
    (:func:`iformer_mm.engine.runner.load_config`), or copy a Config, and
    apply ``cfg_options``.

    Raises:
        ConfigNotFoundError: the config file does not exist.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        return cfg
    config = str(config)
    if not osp.isfile(config):
        raise ConfigNotFoundError(
            f'Config file not found: {config!r}; pass the path of a config '
            '(.py), e.g. configs/toy/maskrcnn_iformer_t_toy.py.')
    from ..engine.runner import load_config as read_config
    return read_config(config, cfg_options=cfg_options)


def scope_of(cfg: Config) -> str:
    """The OpenMMLab library a config belongs to, from ``default_scope``."""
    scope = cfg.get('default_scope', None)
    if scope not in TASKS:
        raise ValueError(
            f'Config has default_scope={scope!r}; iformer_mm.apis supports '
            f'{sorted(TASKS)} (detection, segmentation, classification).')
    return scope


def task_of(cfg: Config) -> str:
    """``'detection'``, ``'segmentation'`` or ``'classification'``."""
    return TASKS[scope_of(cfg)][0]


def init_scope(cfg: Config) -> str:
    """Import the config's library, register its modules, set the scope.

    Also imports ``iformer_mm`` (registers IFormer and the stack fixes) and
    the config's ``custom_imports``.
    """
    scope = scope_of(cfg)
    # what ``import iformer_mm`` registers (the root package itself would
    # be an import cycle: it imports this module for get_model & co.)
    from .. import compat, datasets, engine, models  # noqa: F401
    try:
        utils = importlib.import_module(f'{TASKS[scope][1]}.utils')
    except ImportError as e:  # pragma: no cover - environment problem
        raise ImportError(
            f'The config needs {TASKS[scope][1]} ({scope}), which is not '
            f'importable: {e}') from e
    utils.register_all_modules(init_default_scope=False)
    custom = cfg.get('custom_imports', None)
    if custom:
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**custom)
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    return scope


def strip_pretrained(node: Any) -> int:
    """Drop every ``init_cfg`` of type ``Pretrained`` in a model config.

    The tools here run random-init weights or an explicit checkpoint, never
    a download. Returns how many were dropped.
    """
    dropped = 0
    if isinstance(node, dict):
        init_cfg = node.get('init_cfg', None)
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            node['init_cfg'] = None
            dropped += 1
        elif isinstance(init_cfg, (list, tuple)):
            kept = [c for c in init_cfg
                    if not (isinstance(c, dict)
                            and c.get('type') == 'Pretrained')]
            dropped += len(init_cfg) - len(kept)
            node['init_cfg'] = kept or None
        # mmdet/mmseg ``pretrained=`` shortcut
        if isinstance(node.get('pretrained', None), str):
            node['pretrained'] = None
            dropped += 1
        for key, value in node.items():
            if key != 'init_cfg':
                dropped += strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            dropped += strip_pretrained(value)
    return dropped


def innermost_dataset(ds_cfg: dict) -> dict:
    """Unwrap ``RepeatDataset``/``ClassBalancedDataset``-style wrappers."""
    while isinstance(ds_cfg, dict) and isinstance(
            ds_cfg.get('dataset', None), dict):
        ds_cfg = ds_cfg['dataset']
    return ds_cfg


def dataset_meta(cfg: Config) -> Dict[str, Any]:
    """Class names (and palette) of the config's test dataset.

    Read from the dataset's ``metainfo`` in the config, completed by the
    dataset class's ``METAINFO``; no data is read. Call after
    :func:`init_scope`.
    """
    loader = cfg.get('test_dataloader', None) or cfg.get('val_dataloader',
                                                         None)
    if not loader or 'dataset' not in loader:
        return {}
    ds_cfg = innermost_dataset(loader['dataset'])
    meta: Dict[str, Any] = {}
    try:
        from mmengine.registry import DATASETS
        cls = DATASETS.get(ds_cfg.get('type'))
        meta.update(copy.deepcopy(getattr(cls, 'METAINFO', {}) or {}))
    except Exception:  # noqa: BLE001 - the type may be unknown here
        pass
    cfg_meta = ds_cfg.get('metainfo', None)
    if cfg_meta:
        cfg_meta = dict(cfg_meta)
        if 'classes' in cfg_meta and 'palette' not in cfg_meta and len(
                meta.get('palette', []) or []) != len(cfg_meta['classes']):
            meta.pop('palette', None)
        meta.update(cfg_meta)
    for lazy in (True, False):
        if meta.get('classes'):
            break
        # e.g. a dataset registered as a builder function, or one whose
        # classes come from its folders: build it (lazily first, without
        # reading annotations) and ask it.
        try:
            from mmengine.registry import DATASETS
            built = DATASETS.build(dict(copy.deepcopy(ds_cfg),
                                        lazy_init=lazy))
            meta.update(copy.deepcopy(dict(built.metainfo)))
        except Exception:  # noqa: BLE001 - best effort
            pass
    if 'classes' in meta and meta['classes'] is not None:
        meta['classes'] = tuple(meta['classes'])
    return meta


def num_classes_of(cfg: Config) -> Optional[int]:
    """``num_classes`` of the model's (first) head, if the config has one."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get('num_classes', None), int):
                found.append(node['num_classes'])
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(cfg.get('model', {}))
    return found[0] if found else None


@contextlib.contextmanager
def quiet_mmengine(level: int = logging.WARNING):
    """Raise the current MMLogger's level for the duration of the block."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    old = logger.level
    handler_levels = [h.level for h in logger.handlers]
    logger.setLevel(level)
    for h in logger.handlers:
        h.setLevel(max(h.level, level))
    try:
        yield
    finally:
        logger.setLevel(old)
        for h, lvl in zip(logger.handlers, handler_levels):
            h.setLevel(lvl)


def build_model(cfg: Config, checkpoint: Optional[str] = None,
                device: str = 'cpu', init_weights: bool = True,
                allow_partial: bool = False):
    """Build ``cfg.model`` in the config's scope, random-init or from a
    checkpoint, in eval mode on ``device``. Pretrained ``init_cfg`` entries
    are dropped (nothing is downloaded).

    The checkpoint is loaded by
    :func:`iformer_mm.models.checkpoint.load_model_checkpoint`: strictly,
    unless ``allow_partial`` (then what fits, with a warning that counts
    the rest).

    Raises:
        CheckpointError: the checkpoint is missing or not a checkpoint.
        CheckpointMismatchError: it does not fit the model (keys named).
    """
    import torch
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS

    init_scope(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    strip_pretrained(model_cfg)
    if 'data_preprocessor' not in model_cfg and cfg.get(
            'data_preprocessor', None):
        model_cfg['data_preprocessor'] = copy.deepcopy(cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    if checkpoint is not None:
        from ..models.checkpoint import load_model_checkpoint
        report = load_model_checkpoint(model, checkpoint,
                                       strict=not allow_partial)
        dataset_meta = report.meta.get('dataset_meta')
        if dataset_meta:
            model.dataset_meta = dataset_meta
    elif init_weights:
        with quiet_mmengine():  # init_weights logs every parameter
            model.init_weights()
    model = revert_sync_batchnorm(model)
    model.cfg = cfg
    model.to(torch.device(device))
    model.eval()
    return model
