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
model instead (and the file is written with that model's keys). It prints
the counts (loaded / missing / unexpected / wrong shape) and refuses to
write a partial match unless ``--allow-partial``.
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

from iformer_mm.engine.errors_cli import (add_debug_argument,  # noqa: E402
                                          run_tool)


def parse_args(argv=None):
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
    """Convert and check without writing; returns ``(state, meta, split
    checkpoint, reports)`` (``meta['target']``: what was written)."""
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
    meta = dict(converted_from=osp.basename(args.src),
                source_layout=conv.layout, target=target)
    if args.config:  # the config's model decides what is written
        meta['target'] = 'model'
        from iformer_mm.apis.build import build_model
        from iformer_mm.config import load_config
        model = build_model(load_config(args.config), init_weights=False)
        state, _ = state_dict_for_model(model, raw, prefix=args.prefix,
                                        key=args.key)
        reports = [compare_state(model, state, args.src, conv.layout,
                                 f'{type(model).__name__} of '
                                 f'{osp.basename(args.config)}')]
    else:
        # no --arch and no exact match: report against the closest arch
        arch = args.arch or guess_arch(conv.backbone, IFormer) or \
            _closest_arch(conv.backbone)
        if arch not in IFormer.arch_zoo:
            raise ConfigError(f'--arch {arch!r} is not one of '
                              f'{sorted(IFormer.arch_zoo)}.')
        meta['arch'] = arch
        with torch.device('meta'):
            backbone = IFormer(arch)
        reports = [compare_state(backbone, conv.backbone, args.src,
                                 conv.layout,
                                 f"IFormer(arch='{arch}') backbone")]
        if target in ('mmpretrain', 'model') and conv.classifier:
            reports.append(_classifier_report(
                conv, IFormer.arch_zoo[arch]['dims'], args.src))
        state = _select(conv, target)
    if isinstance(conv.meta.get('dataset_meta'), dict):
        meta['dataset_meta'] = conv.meta['dataset_meta']
    return state, meta, conv, reports


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


def _mismatch(args, conv, meta, report):
    """The error for a partial match, with the arch the file holds when
    that is not the one it was checked against."""
    from iformer_mm.errors import CheckpointMismatchError
    from iformer_mm.models.backbones import IFormer
    from iformer_mm.models.checkpoint import guess_arch
    found = guess_arch(conv.backbone, IFormer)
    hint = f"its backbone is arch '{found}'; " if found and \
        found != meta.get('arch') else ''
    return CheckpointMismatchError(
        f'{args.src} ({conv.layout}) does not fit {report.target}: '
        f'{report.counts()}; {report.details()}. Nothing written; {hint}'
        'check --arch/--config, or pass --allow-partial to write it anyway.',
        missing=report.missing, unexpected=report.unexpected,
        mismatched=report.mismatched)


def _main(argv):
    args = parse_args(argv)
    _check_paths(args.src, args.dst, args.overwrite)
    state, meta, conv, reports = convert(args)
    partial = [r for r in reports if not r.complete]
    if partial and not args.allow_partial:
        raise _mismatch(args, conv, meta, partial[0])
    _save_atomically(dict(state_dict=state, meta=meta), args.dst)
    for r in reports:
        print(f'{r.target}: {r.counts()}')
    if meta['target'] == 'model' and conv.others and not args.config:
        from iformer_mm.models.checkpoint import key_prefixes
        print(f'{len(conv.others)} other tensors kept unchecked '
              f'({key_prefixes(list(conv.others))}); pass --config to check '
              'them against a model')
    for r in partial:
        print(f'warning: --allow-partial: {r.target}: {r.counts()}; '
              f'{r.details()}', file=sys.stderr)
    status = 'PARTIAL' if partial else 'complete'
    print(f'{args.src} ({conv.layout}) -> {args.dst} (--target '
          f'{meta["target"]}): {len(state)} tensors written, match {status}')


def main(argv=None) -> int:
    """A user mistake: one line on stderr, exit code 2 (--debug: traceback)."""
    return run_tool(_main, argv, prog='convert_checkpoint.py')


if __name__ == '__main__':
    sys.exit(main())
