#!/usr/bin/env python
"""Convert an iFormer checkpoint of any layout to OpenMMLab names, checked.

Reads with ``weights_only=True`` (only the types found in the release files
are allowed; nothing in the file is executed). Accepts the authors' ImageNet
release (``model`` / ``model_ema``, distilled head), timm's ``iformer_*``, a
plain / ``{'model'}`` / ``{'state_dict'}`` backbone state dict, the
authors' mmdet / mmseg whole-model Runner checkpoints and this project's
own. Writes ``{'state_dict': ..., 'meta': ...}``:

* ``--target mmpretrain``: ``backbone.*`` + ``head.*`` for an
  ``ImageClassifier`` with ``IFormerClsHead``;
* ``--target backbone``: ``backbone.*`` only, for
  ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``
  or ``load_from`` with ``--allow-partial``;
* ``--target model``: a whole model (``backbone.*`` renamed, ``neck.*``,
  ``rpn_head.*``, ``decode_head.*`` ... kept), for ``tools/test.py``;
* ``--target auto`` (default): ``model`` for a whole model, ``mmpretrain``
  for a file with a classifier, else ``backbone``.

The backbone is checked against ``IFormer(arch)`` (``--arch``, found from
the shapes by default), the classifier against the head it fills; with
``--config`` the whole converted file is checked against that config's
model instead (and the file is written with that model's keys). It prints the counts (loaded / missing / unexpected / wrong
shape) and refuses to write a partial match unless ``--allow-partial``.
It never overwrites its source (also through a symlink or hard link) nor,
without ``--overwrite``, any existing file.

Example::

    python tools/convert_checkpoint.py iFormer_m.pth iformer_m_mmpretrain.pth
    python tools/convert_checkpoint.py mask_rcnn_iformer_m.pth out.pth \\
        --config configs/maskrcnn_iformer_m_coco.py
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    from iformer_mm.engine.errors_cli import add_debug_argument
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('src', help='checkpoint of any supported layout (path or '
                   'URL)')
    p.add_argument('dst', help='output file')
    p.add_argument('--target', choices=('auto', 'mmpretrain', 'backbone',
                                        'model'), default='auto',
                   help='what to write (see above); default auto')
    p.add_argument('--arch', default=None,
                   help="IFormer arch to check the backbone against ('t', "
                   "'s', 'm', 'l', 'l2', 'h'); default: the one whose "
                   'shapes the file has')
    p.add_argument('--config', default=None,
                   help='check the whole converted file against this '
                   "config's model (needs its library: mmdet, mmseg or "
                   'mmpretrain)')
    p.add_argument('--key', default=None,
                   help="entry holding the weights, e.g. 'model_ema' for "
                   "the EMA weights of a release file (default: "
                   "'state_dict', then 'model', then 'model_ema')")
    p.add_argument('--prefix', default=None,
                   help="use only the keys under this prefix, e.g. "
                   "'backbone.'")
    p.add_argument('--allow-partial', action='store_true',
                   help='write even if keys are missing, unexpected or of '
                   'the wrong shape (a warning counts them)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing output file (never the source)')
    add_debug_argument(p)
    return p.parse_args(argv)


def _check_paths(src, dst, overwrite):
    from iformer_mm.errors import CheckpointError, ConfigError
    if '://' not in src and osp.exists(dst) and (
            osp.realpath(src) == osp.realpath(dst)
            or (osp.exists(src) and osp.samefile(src, dst))):
        raise CheckpointError(
            f'Refusing to write {dst!r}: it is the source checkpoint '
            f'{src!r} (same file through a link); choose another output '
            'path.')
    if osp.exists(dst) and not overwrite:
        raise ConfigError(f'Output {dst!r} exists; choose another path or '
                          'pass --overwrite.')
    parent = osp.dirname(osp.abspath(dst))
    if not osp.isdir(parent):
        raise ConfigError(f'Output directory {parent!r} does not exist; '
                          'create it first.')
    if not os.access(parent, os.W_OK):
        raise ConfigError(f'Output directory {parent!r} is not writable.')


def _save_atomically(obj, dst):
    """torch.save into memory, then written with ``atomic_write``
    (a temporary file next to ``dst``, renamed): an interrupted run leaves
    no half-written output."""
    import io

    import torch
    from iformer_mm.engine.checkpointing import atomic_write
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(buf.getbuffer(), dst)  # the buffer itself, not a copy


def _classifier_report(conv, dims, src):
    """The classifier against the IFormerClsHead it fills (its number of
    classes taken from the file)."""
    import torch
    import torch.nn as nn
    from iformer_mm.models.backbones.iformer import NormLinear
    from iformer_mm.models.checkpoint import compare_state
    weight = conv.classifier.get('head.l.weight')
    num_classes = weight.shape[0] if weight is not None else 1000
    with torch.device('meta'):
        head = nn.Module()
        head.head = NormLinear(dims[-1], num_classes)
        if any(k.startswith('head_dist.') for k in conv.classifier):
            head.head_dist = NormLinear(dims[-1], num_classes)
    return compare_state(head, conv.classifier, src, conv.layout,
                         f'IFormerClsHead({num_classes} classes)')


def convert(args):
    """Convert and check without writing; returns ``(state, meta, target,
    split checkpoint, reports)``."""
    import torch
    from iformer_mm.errors import CheckpointError, ConfigError
    from iformer_mm.models.backbones import IFormer
    from iformer_mm.models.checkpoint import (compare_state, guess_arch,
                                              load_checkpoint_file,
                                              split_checkpoint,
                                              state_dict_for_model)
    raw = load_checkpoint_file(args.src)
    conv = split_checkpoint(raw, prefix=args.prefix, key=args.key)
    target = args.target
    if target == 'auto':
        target = 'model' if conv.others else (
            'mmpretrain' if conv.classifier else 'backbone')
    if target == 'mmpretrain' and not conv.classifier:
        raise CheckpointError(
            f'{args.src} ({conv.layout}) has no classifier: use --target '
            'backbone (or model for a whole detector/segmentor).')
    reports = []
    if args.config:  # the config's model decides what is written
        target = 'model'
        from iformer_mm.apis.build import build_model
        from iformer_mm.config import load_config
        model = build_model(load_config(args.config), init_weights=False)
        state, _ = state_dict_for_model(model, raw, prefix=args.prefix,
                                        key=args.key)
        reports.append(compare_state(model, state, args.src, conv.layout,
                                     f'{type(model).__name__} of '
                                     f'{osp.basename(args.config)}'))
        arch = None
    else:
        arch = args.arch or guess_arch(conv.backbone, IFormer)
        if arch is None:
            # no exact match: report against the arch closest in keys
            arch = _closest_arch(conv.backbone)
        if arch not in IFormer.arch_zoo:
            raise ConfigError(f'--arch {arch!r} is not one of '
                              f'{sorted(IFormer.arch_zoo)}.')
        with torch.device('meta'):
            backbone = IFormer(arch)
        reports.append(compare_state(backbone, conv.backbone, args.src,
                                     conv.layout,
                                     f"IFormer(arch='{arch}') backbone"))
        if target in ('mmpretrain', 'model') and conv.classifier:
            reports.append(_classifier_report(
                conv, IFormer.arch_zoo[arch]['dims'], args.src))
        state = _select(conv, target)
    meta = dict(converted_from=osp.basename(args.src),
                source_layout=conv.layout, target=target)
    if arch:
        meta['arch'] = arch
    if isinstance(conv.meta.get('dataset_meta'), dict):
        meta['dataset_meta'] = conv.meta['dataset_meta']
    return state, meta, target, conv, reports


def _select(conv, target):
    """The converted keys for ``target`` (whole-model names)."""
    from collections import OrderedDict
    out = OrderedDict(('backbone.' + k, v) for k, v in conv.backbone.items())
    if target in ('mmpretrain', 'model'):
        out.update(('head.' + k, v) for k, v in conv.classifier.items())
    if target == 'model':
        out.update(conv.others)
    return out


def _closest_arch(backbone):
    """The arch sharing most keys of the same shape with ``backbone``."""
    from iformer_mm.models.backbones import IFormer
    from iformer_mm.models.checkpoint import arch_shapes
    have = {k: tuple(v.shape) for k, v in backbone.items()}
    scores = {a: sum(have.get(k) == s for k, s in want.items())
              for a, want in arch_shapes(IFormer).items()}
    return max(scores, key=scores.get)


def main(argv=None) -> int:
    args = parse_args(argv)
    from iformer_mm.errors import CheckpointMismatchError, UserError
    try:
        _check_paths(args.src, args.dst, args.overwrite)
        state, meta, target, conv, reports = convert(args)
        partial = [r for r in reports if not r.complete]
        if partial and not args.allow_partial:
            r = partial[0]
            from iformer_mm.models.backbones import IFormer
            from iformer_mm.models.checkpoint import guess_arch
            found = guess_arch(conv.backbone, IFormer)
            hint = f"its backbone is arch '{found}'; " if found and \
                found != meta.get('arch') else ''
            raise CheckpointMismatchError(
                f'{args.src} ({conv.layout}) does not fit {r.target}: '
                f'{r.counts()}; {r.details()}. Nothing written; {hint}check '
                '--arch/--config, or pass --allow-partial to write it '
                'anyway.', missing=r.missing, unexpected=r.unexpected,
                mismatched=r.mismatched)
        _save_atomically(dict(state_dict=state, meta=meta), args.dst)
    except UserError as e:
        from iformer_mm.engine.errors_cli import debug_requested
        if debug_requested():
            raise
        print(f'convert_checkpoint.py: error: {e} (--debug for the traceback)',
              file=sys.stderr)
        return 2
    for r in reports:
        print(f'{r.target}: {r.counts()}')
    kept = [k for k in conv.others] if target == 'model' else []
    if kept and not args.config:
        from iformer_mm.models.checkpoint import key_prefixes
        print(f'{len(kept)} other tensors kept unchecked '
              f'({key_prefixes(kept)}); pass --config to check them against '
              'a model')
    for r in partial:
        print(f'warning: --allow-partial: {r.target}: {r.counts()}; '
              f'{r.details()}', file=sys.stderr)
    status = 'PARTIAL' if partial else 'complete'
    print(f'{args.src} ({conv.layout}) -> {args.dst} (--target {target}): '
          f'{len(state)} tensors written, match {status}')
    return 0


if __name__ == '__main__':
    # A user mistake: one line on stderr, exit code 2 (--debug: traceback).
    from iformer_mm.engine.errors_cli import run_tool
    sys.exit(run_tool(main, prog='convert_checkpoint.py'))
