#!/usr/bin/env python
"""Parameters and GMACs of an iFormer variant or of a config's model.

Examples::

    python tools/get_flops.py m                          # iFormer-M + head, 224
    python tools/get_flops.py l --shape 512 --no-head    # backbone at 512x512
    python tools/get_flops.py configs/maskrcnn_iformer_m_coco.py --shape 800 1333
    python tools/get_flops.py configs/fpn_iformer_t_ade20k_40k.py --backbone-only
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from iformer_mm.apis.build import add_cfg_options  # noqa: E402
from iformer_mm.engine.errors_cli import (add_debug_argument,  # noqa: E402
                                          run_tool)

#: the input size a config is counted at unless --shape says otherwise
CONFIG_SHAPES = {'detection': [800, 1333], 'segmentation': [512, 512],
                 'classification': [224, 224]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('target', help='an iFormer arch (t, s, m, l, l2, h) or a '
                   'config file')
    p.add_argument('--shape', type=int, nargs='+', default=None,
                   help='input size: H [W] (224 for an arch, 512 for seg, '
                   '800 1333 for det configs by default)')
    p.add_argument('--no-head', action='store_true',
                   help='arch only: count the backbone without the '
                   '1000-class head')
    p.add_argument('--attention', default='global',
                   help="arch only: 'global', 'window', 'hybrid' or "
                   "'authors'")
    p.add_argument('--window-chunks', type=int, default=1)
    p.add_argument('--backbone-only', action='store_true',
                   help="config only: count the config's backbone")
    p.add_argument('--no-fuse', action='store_true',
                   help='count BatchNorm too (default: BN folded, as '
                   'deployed and as the paper counts)')
    add_cfg_options(p)
    add_debug_argument(p)
    return p.parse_args(argv)


def _hw(shape):
    """``[H, W]`` from ``[H, W]`` or ``[side]``."""
    return shape * 2 if len(shape) == 1 else shape


def _count_arch(args):
    from iformer_mm.utils.complexity import backbone_complexity
    shape = _hw(args.shape or [224])
    res = backbone_complexity(args.target.lower(), shape,
                              with_head=not args.no_head,
                              attention=args.attention,
                              window_chunks=args.window_chunks)
    what = f'iFormer-{args.target.upper()}' + \
        ('' if args.no_head else ' + 1000-class head')
    return what, shape, res


def _count_config(args):
    from iformer_mm.config import load_config, task_of
    from iformer_mm.engine.config_check import check_config
    from iformer_mm.utils.complexity import config_complexity
    cfg = load_config(args.target, args.cfg_options)
    for warning in check_config(cfg):
        print(f'warning: {warning}', file=sys.stderr)
    shape = _hw(args.shape or CONFIG_SHAPES[task_of(cfg)])
    res = config_complexity(cfg, shape, backbone_only=args.backbone_only,
                            deploy=not args.no_fuse)
    what = f'{osp.basename(args.target)} ' + \
        ('backbone' if args.backbone_only else 'whole model')
    return what, shape, res


def _main(argv):
    args = parse_args(argv)
    from iformer_mm.engine.config_check import ATTENTION_NAMES
    from iformer_mm.errors import ConfigError, did_you_mean
    from iformer_mm.models.backbones.iformer import ARCH_ZOO
    if args.attention not in ATTENTION_NAMES:
        raise ConfigError(
            f'--attention {args.attention!r} is not an attention layout'
            f'{did_you_mean(args.attention, ATTENTION_NAMES)} (one of '
            f'{", ".join(repr(a) for a in ATTENTION_NAMES)})')
    if args.target.lower() in ARCH_ZOO:
        what, shape, res = _count_arch(args)
    elif osp.isfile(args.target):
        what, shape, res = _count_config(args)
    else:
        raise ConfigError(
            f'{args.target!r} is neither an iFormer arch'
            f'{did_you_mean(args.target, ARCH_ZOO)} ('
            f'{", ".join(ARCH_ZOO)}) nor an existing config file')
    split = '=' * 30
    print(f'{split}\nModel: {what}\nInput shape: (3, {shape[0]}, {shape[1]})'
          f'\nFlops: {res["macs"] / 1e9:.3f} GMACs'
          f'{" (BN folded)" if not args.no_fuse else ""}'
          f'\nParams: {res["params"] / 1e6:.3f} M\n{split}')
    print('!!!MACs are counted with mmengine.analysis.FlopAnalyzer; '
          'verify before citing them in a paper.')


def main(argv=None) -> int:
    """A user mistake: one line on stderr, exit code 2 (--debug: traceback)."""
    return run_tool(_main, argv, prog='get_flops.py')


if __name__ == '__main__':
    code = main()
    if code:  # exit quietly on success (runpy callers keep running)
        sys.exit(code)
