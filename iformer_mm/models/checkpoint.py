"""Reading iFormer checkpoints: the authors' release, timm, and our own.

Three key layouts exist for the same weights:

* ours (= timm's ``iformer_*`` names): ``stem.conv1.c.weight``,
  ``stages.2.downsample.bn.weight``, ``stages.2.blocks.9.mixer.module.q.c.weight``,
  classifier ``head.head.l.weight`` / ``head.head_dist.l.weight``;
* the authors' release (``iFormer_<arch>.pth``): ``downsample_layers.0.*``
  for the stem, ``downsample_layers.i.0.*`` for the stage-i downsample,
  ``stages.i.j.block.<token_channel_mixer|channel_mixer|...>.m.*`` for the
  blocks, ``classifier.classifier[_dist].*`` for the head, wrapped in
  ``model`` with training metadata (an argparse namespace, numpy scalars);
* OpenMMLab wrappers: ``backbone.`` / ``head.`` prefixes inside
  ``state_dict``.

:func:`convert_to_ours` maps any of them onto ours; the renaming rules are
data (:data:`RELEASE_RENAMES`), applied in order.
"""
from __future__ import annotations

import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..compat import RELEASE_CHECKPOINT_GLOBALS, safe_load

# (pattern, replacement) applied in order to the authors' release keys.
RELEASE_RENAMES: List[Tuple[str, str]] = [
    (r'^classifier\.classifier_dist\.', 'head.head_dist.'),
    (r'^classifier\.classifier\.', 'head.head.'),
    (r'^classifier\.(?!classifier)', 'head.head.'),
    (r'^downsample_layers\.0\.0\.', 'stem.conv1.'),
    (r'^downsample_layers\.0\.2\.conv_exp_bn1\.', 'stem.conv2.'),
    (r'^downsample_layers\.0\.2\.conv_pwl_bn2\.', 'stem.conv3.'),
    (r'^downsample_layers\.(\d+)\.0\.', r'stages.\1.downsample.'),
    (r'^stages\.(\d+)\.(\d+)\.block\.', r'stages.\1.blocks.\2.'),
    (r'\.token_channel_mixer\.', '.mixer.'),
    (r'\.channel_mixer\.', '.mixer.'),
    (r'\.token_mixer\.', '.mixer.'),
    (r'\.m\.', '.module.'),
]

def safe_torch_load(path: str, map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` and the release types.

    Arbitrary objects in the file are refused by torch's weights-only
    unpickler (:class:`iformer_mm.compat.UnsafeCheckpointError`); nothing in
    the file is executed.
    """
    return safe_load(path, map_location=map_location,
                     extra_safe_globals=RELEASE_CHECKPOINT_GLOBALS)


def load_checkpoint_file(filename: str, map_location='cpu') -> dict:
    """Read a local file or an ``http(s)://`` URL (cached in torch hub)."""
    if re.match(r'^https?://', filename):
        cache = osp.join(torch.hub.get_dir(), 'checkpoints')
        local = osp.join(cache, osp.basename(filename))
        if not osp.exists(local):
            os.makedirs(cache, exist_ok=True)
            try:
                torch.hub.download_url_to_file(filename, local, progress=True)
            except Exception as e:  # no network, 404 ...
                raise RuntimeError(
                    f'Could not download {filename} ({e}). Download it by '
                    f'hand and pass the local path, e.g. --cfg-options '
                    f'model.backbone.init_cfg.checkpoint=/path/'
                    f'{osp.basename(filename)}') from e
        filename = local
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint {filename} does not exist.')
    return safe_torch_load(filename, map_location)


def unwrap_state_dict(ckpt) -> Dict[str, torch.Tensor]:
    """Descend through ``state_dict`` / ``model`` wrappers to the weights."""
    while isinstance(ckpt, dict) and not _is_state_dict(ckpt):
        inner = next((ckpt[k] for k in ('state_dict', 'model', 'model_ema')
                      if isinstance(ckpt.get(k), dict)), None)
        if inner is None:
            break
        ckpt = inner
    if not isinstance(ckpt, dict):
        raise TypeError(f'Expected a dict checkpoint, got {type(ckpt)}.')
    return ckpt


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def detect_format(keys: Iterable[str]) -> str:
    keys = list(keys)
    if any(k.startswith('downsample_layers.') or '.block.' in k for k in keys):
        return 'release'
    if any(k.startswith('backbone.') for k in keys):
        return 'openmmlab'
    return 'timm'


def convert_to_ours(state_dict: Dict[str, torch.Tensor]) -> 'OrderedDict':
    """Map a release / timm / OpenMMLab state dict onto our key names.

    Backbone keys come out bare (``stem.*``, ``stages.*``), classifier keys
    as ``head.head.*`` / ``head.head_dist.*``. Keys that belong to neither
    (e.g. a detector's neck) are kept with their OpenMMLab prefix.
    """
    state_dict = unwrap_state_dict(state_dict)
    fmt = detect_format(state_dict)
    out = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith('module.'):
            key = key[len('module.'):]
        if fmt == 'release':
            for pattern, repl in RELEASE_RENAMES:
                key = re.sub(pattern, repl, key)
        elif fmt == 'openmmlab':
            if key.startswith('backbone.'):
                key = key[len('backbone.'):]
            elif key.startswith('head.') and not key.startswith(
                    ('head.head.', 'head.head_dist.')):
                key = 'head.' + key  # not an iFormer head: keep distinct
        out[key] = value
    return out


def _is_backbone_key(key: str) -> bool:
    return key.startswith(('stem.', 'stages.'))


def load_state_dict_reporting(module: nn.Module,
                              state_dict: Dict[str, torch.Tensor],
                              logger='current') -> Tuple[List[str], List[str]]:
    """Load non-strictly, but fail on shape mismatches and name what differs.

    Returns ``(missing, unexpected)`` and logs both lists by name.
    """
    own = module.state_dict()
    bad = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
           for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError('Checkpoint does not fit the model (wrong arch?). '
                         'Shape mismatch for ' + '; '.join(bad))
    missing = [k for k in own if k not in state_dict
               and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    module.load_state_dict(state_dict, strict=False)
    if missing:
        print_log(f'missing keys in checkpoint: {", ".join(missing)}',
                  logger=logger, level=30)
    if unexpected:
        print_log(f'unexpected keys in checkpoint: {", ".join(unexpected)}',
                  logger=logger, level=30)
    return missing, unexpected


def load_iformer_checkpoint(backbone: nn.Module, filename: str,
                            prefix: Optional[str] = None,
                            map_location='cpu'):
    """Load the backbone part of any supported checkpoint into ``backbone``.

    The classifier of an ImageNet checkpoint is ignored silently (a backbone
    has none); every other missing or unexpected key is reported by name.
    """
    state = convert_to_ours(load_checkpoint_file(filename, map_location))
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = OrderedDict((k[len(prefix):], v) for k, v in state.items()
                            if k.startswith(prefix))
    state = OrderedDict((k, v) for k, v in state.items()
                        if not k.startswith(('head.head.', 'head.head_dist.')))
    print_log(f'load iFormer backbone weights from {filename}',
              logger='current')
    return load_state_dict_reporting(backbone, state)


def to_openmmlab(state_dict: Dict[str, torch.Tensor],
                 with_head: bool = True) -> 'OrderedDict':
    """Our names -> an mmpretrain ImageClassifier / mmdet-mmseg backbone."""
    out = OrderedDict()
    for key, value in convert_to_ours(state_dict).items():
        if _is_backbone_key(key):
            out['backbone.' + key] = value
        elif key.startswith(('head.head.', 'head.head_dist.')):
            if with_head:
                out[key] = value
        else:
            out[key] = value
    return out
