"""Checkpoint files in every layout the loaders accept, written from a
network's state dict by rules spelled out here, independently of
``iformer_mm.models.checkpoint`` (the code under test).

Layouts (see ``LAYOUTS``): the authors' ImageNet release (plain, distilled,
EMA), timm's, a plain / ``{'model'}`` / ``{'state_dict'}`` backbone state
dict, DDP's ``module.`` prefix, the authors' mmdet and mmseg whole-model
Runner checkpoints (backbone in their names under ``backbone.``, the rest
as mmdet/mmseg name it), and this project's own (backbone-only, as
``tools/convert_checkpoint.py --target backbone`` writes it, and a whole
model as the Runner writes it).
"""
import argparse
import re

import numpy as np
import torch
import torch.nn as nn

from iformer_mm.models.backbones import IFormer

#: A tiny arch with every block type (ConvBlock, CPE, SHMA, FFN) and layer
#: scale (``gamma``), for fast round trips; 't' where a real arch is needed
#: (tools/convert_checkpoint.py checks against the arch zoo).
TINY = dict(dims=(8, 16, 32, 64), depths=(1, 1, 4, 3),
            attn_groups=(0, 0, 1, 1), qk_reduction=(0, 0, 2, 4),
            conv_ratio=3, ffn_ratio=2, layer_scale_init_value=1e-6)


def randomize(module, seed):
    """Random weights and non-trivial BN statistics, different per seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith('num_batches_tracked'):
                t.fill_(seed + 1)
            elif name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return module.eval()


def _release_block_name(state, si, bi):
    prefix = f'stages.{si}.blocks.{bi}.mixer.module.'
    if prefix + 'q.c.weight' in state:
        return 'token_mixer'  # SHMA
    first = state.get(prefix + '0.c.weight')
    if first is not None and first.shape[-1] == 7:
        return 'token_channel_mixer'  # ConvBlock
    return 'channel_mixer'  # FFN


def to_release(state):
    """Our / timm names -> the authors' (their models/iformer.py and
    detection|segmentation/iformer.py module names)."""
    out = {}
    for k, v in state.items():
        m = re.match(r'stages\.(\d+)\.blocks\.(\d+)\.(mixer|cpe)\.(.*)', k)
        d = re.match(r'stages\.(\d+)\.downsample\.(.*)', k)
        if k.startswith('stem.'):
            k = k.replace('stem.conv1.', 'downsample_layers.0.0.').replace(
                'stem.conv2.', 'downsample_layers.0.2.conv_exp_bn1.').replace(
                'stem.conv3.', 'downsample_layers.0.2.conv_pwl_bn2.')
        elif d:
            k = f'downsample_layers.{d.group(1)}.0.{d.group(2)}'
        elif m:
            si, bi, kind, rest = m.groups()
            rest = re.sub(r'^module\.', 'm.', rest)
            name = 'cpe' if kind == 'cpe' else _release_block_name(
                state, si, bi)
            k = f'stages.{si}.{bi}.block.{name}.{rest}'
        elif k.startswith('head.head_dist.'):
            k = k.replace('head.head_dist.', 'classifier.classifier_dist.')
        elif k.startswith('head.head.'):
            k = k.replace('head.head.', 'classifier.classifier.')
        out[k] = v
    return out


class TinyDense(nn.Module):
    """A whole model with an IFormer at ``backbone`` and small heads under
    the names mmdet's Mask R-CNN (``neck``, ``rpn_head``, ``roi_head``) or
    mmseg's Semantic FPN (``neck``, ``decode_head``) give them."""

    def __init__(self, arch=TINY, kind='mmdet'):
        super().__init__()
        self.backbone = IFormer(arch)
        c = self.backbone.dims[-1]
        self.neck = nn.Conv2d(c, 8, 1)
        if kind == 'mmdet':
            self.rpn_head = nn.Conv2d(8, 3, 1)
            self.roi_head = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))
        else:
            self.decode_head = nn.Conv2d(8, 5, 1)


def classifier_state(arch=TINY, distilled=False, seed=0, num_classes=10):
    """Backbone + IFormerClsHead-style classifier, our / timm names."""
    net = randomize(IFormer(arch), seed)
    state = dict(net.state_dict())
    g = torch.Generator().manual_seed(seed + 100)
    c = net.dims[-1]
    heads = ['head'] + (['head_dist'] if distilled else [])
    for h in heads:
        state[f'head.{h}.bn.weight'] = torch.rand(c, generator=g) + 0.5
        state[f'head.{h}.bn.bias'] = torch.randn(c, generator=g)
        state[f'head.{h}.bn.running_mean'] = torch.randn(c, generator=g)
        state[f'head.{h}.bn.running_var'] = torch.rand(c, generator=g) + 0.5
        state[f'head.{h}.bn.num_batches_tracked'] = torch.tensor(7)
        state[f'head.{h}.l.weight'] = torch.randn(num_classes, c,
                                                  generator=g)
        state[f'head.{h}.l.bias'] = torch.randn(num_classes, generator=g)
    return state


def _backbone_only(state):
    return {k: v for k, v in state.items() if not k.startswith('head.')}


def _release_extras():
    return {'epoch': np.int64(299), 'max_accuracy': np.float64(80.4),
            'args': argparse.Namespace(model='iFormer_t', lr=4e-3)}


def authors_whole(state):
    """A whole model as the authors' mmdet/mmseg Runner saved it: their
    backbone names under ``backbone.``, the rest as mmdet/mmseg name it."""
    backbone = to_release({k[len('backbone.'):]: v for k, v in state.items()
                           if k.startswith('backbone.')})
    out = {'backbone.' + k: v for k, v in backbone.items()}
    out.update((k, v) for k, v in state.items()
               if not k.startswith('backbone.'))
    return out


def _runner_meta():
    return {'epoch': 12, 'iter': 1000, 'mmdet_version': '3.3.0',
            'dataset_meta': {'classes': ('a', 'b')}}


#: layout -> (kind, writer). kind: 'classifier' (backbone + head weights),
#: 'backbone', or 'mmdet' / 'mmseg' (whole model). ``writer(src)`` gets
#: the source weights in our names (``classifier_state`` for
#: 'classifier'/'backbone', a TinyDense state dict for whole models) and
#: returns the object to ``torch.save``.
LAYOUTS = {
    'release': ('classifier', lambda s: dict(model=to_release(s),
                                             **_release_extras())),
    'release_distilled': ('classifier_distilled', lambda s: dict(
        model=to_release(s), **_release_extras())),
    'release_ema_only': ('classifier', lambda s: dict(
        model_ema=to_release(s), **_release_extras())),
    'timm': ('classifier', lambda s: dict(s)),
    'plain': ('backbone', lambda s: _backbone_only(s)),
    'model': ('backbone', lambda s: {'model': _backbone_only(s)}),
    'state_dict': ('backbone', lambda s: {'state_dict': _backbone_only(s)}),
    'ddp': ('classifier', lambda s: {'state_dict': {
        'module.' + k: v for k, v in s.items()}}),
    'authors_mmdet': ('mmdet', lambda s: {
        'meta': _runner_meta(), 'state_dict': authors_whole(s)}),
    'authors_mmseg': ('mmseg', lambda s: {
        'meta': _runner_meta(), 'state_dict': authors_whole(s)}),
    'ours_backbone': ('backbone', lambda s: {'state_dict': {
        'backbone.' + k: v for k, v in _backbone_only(s).items()},
        'meta': {'converted_from': 'x.pth'}}),
    'ours_whole': ('mmdet', lambda s: {
        'meta': _runner_meta(), 'state_dict': dict(s),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1}]}}),
}
WHOLE = [k for k, (kind, _) in LAYOUTS.items() if kind in ('mmdet', 'mmseg')]


def source_state(layout, seed=0, arch=TINY):
    """The source weights of ``layout`` in our names."""
    kind = LAYOUTS[layout][0]
    if kind in ('mmdet', 'mmseg'):
        return dict(randomize(TinyDense(arch, kind), seed).state_dict())
    return classifier_state(arch, distilled=kind == 'classifier_distilled',
                            seed=seed)


def write(layout, path, seed=0, edit=None, arch=TINY, rename=None):
    """Write ``layout`` to ``path``; returns the source state (our names).

    ``rename``: a backbone key (our name) written as ``<its name in the
    layout>_renamed``. ``edit(state_in_file_names)`` may change the file's
    weights before saving (e.g. a shape).
    """
    state = source_state(layout, seed, arch)
    in_file = dict(state)
    if rename is not None:
        key = rename if rename in in_file else 'backbone.' + rename
        in_file[key + '_renamed'] = in_file.pop(key)
    obj = LAYOUTS[layout][1](in_file)
    if edit is not None:
        edit(_weights_of(obj))
    torch.save(obj, str(path))
    return state


def _weights_of(obj):
    for key in ('state_dict', 'model', 'model_ema'):
        if key in obj:
            return obj[key]
    return obj
