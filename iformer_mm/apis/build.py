"""Building a whole model from a config, for the benchmark and demo tools.

Everything here is light: the task library (mmdet, mmseg or mmpretrain) is
imported only when a config that needs it is loaded, so ``import
iformer_mm.apis`` costs nothing. Configs are read by :mod:`iformer_mm.config`.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Dict, Optional

from mmengine.config import Config

from ..config import init_scope, innermost_dataset, strip_pretrained


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
