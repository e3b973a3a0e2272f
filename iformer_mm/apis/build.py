"""A whole model from a config, and the tools' options that say which.

:func:`build_model` is what ``get_model``, ``tools/benchmark.py`` and
``tools/convert_checkpoint.py --config`` build; :func:`load_weights` is the
one way a checkpoint gets into a whole model here (the demo's inferencers
use it too). :func:`add_model_arguments` spells ``--checkpoint``,
``--device``, ``--cfg-options`` and ``--allow-partial`` once for every
tool, and :func:`load_checked` checks what they name before anything is
built. The task library (mmdet, mmseg or mmpretrain) is imported only when
a config of it is built.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Dict, Optional

from ..config import init_scope, load_config, strip_pretrained, task_of
from ..errors import ConfigError


# --------------------------------------------------------------------------
# Command-line options
# --------------------------------------------------------------------------
def add_cfg_options(parser) -> None:
    """``--cfg-options key=value ...``, merged into the config."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')


def add_model_arguments(parser,
                        device_help: str = "'cpu', 'cuda', 'cuda:0'"):
    """``--checkpoint``, ``--device``, ``--cfg-options`` and
    ``--allow-partial``; :func:`model_options` reads them back."""
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint to load; random-init weights '
                        'otherwise')
    parser.add_argument('--device', default='cpu', help=device_help)
    add_cfg_options(parser)
    parser.add_argument('--allow-partial', action='store_true',
                        help='load a checkpoint that does not fit the model '
                        '(missing, unexpected or wrong-shape keys) as far '
                        'as it fits, with a warning; by default that is an '
                        'error')


def model_options(args) -> Dict[str, Any]:
    """The options of :func:`add_model_arguments` as keyword arguments of
    :func:`~iformer_mm.apis.benchmark` and :func:`~iformer_mm.apis.run_demo`.
    """
    return dict(checkpoint=args.checkpoint, device=args.device,
                cfg_options=args.cfg_options,
                allow_partial=args.allow_partial)


def load_checked(config, cfg_options: Optional[dict] = None,
                 checkpoint: Optional[str] = None, device: str = 'cpu'):
    """The config and its task, after checking, before anything is built,
    what a user gave: the config file, the checkpoint path, the config's
    codebase and the device.

    Raises:
        ConfigError: no such config, a codebase we do not run, or a device
            that does not exist here.
        CheckpointError: the checkpoint file does not exist.
    """
    import torch

    from ..models.checkpoint import check_checkpoint_path
    cfg = load_config(config, cfg_options)
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)
    task = task_of(cfg)
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(str(e)) from e
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f'device={device!r} but CUDA is not available.')
    return cfg, task


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------
def load_weights(model, checkpoint: str,
                 allow_partial: bool = False) -> Dict[str, Any]:
    """Load ``checkpoint`` (any layout) into the whole ``model`` with
    :func:`~iformer_mm.models.checkpoint.load_model_checkpoint`: strictly,
    unless ``allow_partial`` (then what fits, with a warning that counts
    the rest). Returns the file's ``dataset_meta`` (``{}`` if none).

    Raises:
        CheckpointError: the checkpoint is missing or not a checkpoint.
        CheckpointMismatchError: it does not fit the model (keys named).
    """
    from ..models.checkpoint import load_model_checkpoint
    report = load_model_checkpoint(model, checkpoint,
                                   strict=not allow_partial)
    return dict(report.meta.get('dataset_meta') or {})


@contextlib.contextmanager
def _quiet_mmengine(level: int = logging.WARNING):
    """Raise the current MMLogger's level for the duration of the block."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    levels = [logger.level] + [h.level for h in logger.handlers]
    logger.setLevel(level)
    for h in logger.handlers:
        h.setLevel(max(h.level, level))
    try:
        yield
    finally:
        logger.setLevel(levels[0])
        for h, old in zip(logger.handlers, levels[1:]):
            h.setLevel(old)


def build_model(cfg, checkpoint: Optional[str] = None,
                device: str = 'cpu', init_weights: bool = True,
                allow_partial: bool = False):
    """Build ``cfg.model`` in the config's scope, in eval mode on
    ``device``: from ``checkpoint`` (see :func:`load_weights`), else
    randomly initialised unless ``init_weights`` is False. Pretrained
    ``init_cfg`` entries are dropped (nothing is downloaded); the config is
    ``model.cfg``.
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
        meta = load_weights(model, checkpoint, allow_partial)
        if meta:
            model.dataset_meta = meta
    elif init_weights:
        with _quiet_mmengine():  # init_weights logs every parameter
            model.init_weights()
    model = revert_sync_batchnorm(model)
    model.cfg = cfg
    model.to(torch.device(device))
    model.eval()
    return model
