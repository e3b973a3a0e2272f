#!/usr/bin/env python
"""Whole-model inference speed of a detection / segmentation /
classification config (batch size 1, after warm-up).

Examples::

    # random-init Mask R-CNN iFormer-T, synthetic COCO-size input, CPU
    python tools/benchmark.py configs/maskrcnn_iformer_t_coco.py

    # unfused and fused (BN folded by switch_to_deploy) side by side
    python tools/benchmark.py configs/fpn_iformer_m_ade20k_40k.py \
        --fuse both --num-images 20 --shape 512 512

    # a trained checkpoint on its test set, on a GPU
    python tools/benchmark.py CONFIG --checkpoint CKPT --data real \
        --device cuda --num-images 200

What is timed is ``model.test_step`` per image: data preprocessor, network
and post-processing; image loading and pipeline transforms are not. See
``iformer_mm/apis/benchmark.py``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    from iformer_mm.engine.errors_cli import add_debug_argument
    p = argparse.ArgumentParser(
        description='Benchmark whole-model inference speed of a config.')
    p.add_argument('config', help='config file (its default_scope decides '
                   'mmdet / mmseg / mmpretrain)')
    p.add_argument('--checkpoint', default=None,
                   help='checkpoint to load; random-init weights otherwise')
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:0'")
    p.add_argument('--num-images', type=int, default=20,
                   help='timed images (default 20)')
    p.add_argument('--warmup', type=int, default=3,
                   help='untimed warm-up images (default 3)')
    p.add_argument('--fuse', nargs='?', const='yes', default='no',
                   choices=['no', 'yes', 'both'],
                   help='fold BN of the iFormer parts (switch_to_deploy) '
                   'before timing; "--fuse both" runs unfused then fused')
    p.add_argument('--data', default='auto',
                   choices=['auto', 'real', 'synthetic'],
                   help='auto: test dataloader if its data exists, else a '
                   'synthetic image of the test size')
    p.add_argument('--shape', type=int, nargs='+', default=None,
                   metavar='N', help='synthetic network input H W (or one '
                   'side), skipping the test pipeline resizes')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads')
    p.add_argument('--num-workers', type=int, default=0,
                   help='dataloader workers for --data real')
    p.add_argument('--out', default=None, help='write results as JSON')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries, key=value')
    p.add_argument('--allow-partial', action='store_true',
                   help='load a checkpoint that does not fit the model '
                   '(missing, unexpected or wrong-shape keys) as far as it '
                   'fits, with a warning; by default that is an error')
    p.add_argument('--quiet', action='store_true', help='no progress lines')
    add_debug_argument(p)
    args = p.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = args.shape * 2
        if len(args.shape) != 2 or min(args.shape) < 32:
            p.error('--shape takes H W (or one side), each >= 32')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from iformer_mm.errors import UserError
    from iformer_mm.apis.benchmark import benchmark, dump_json, \
        format_results
    fuses = {'no': [False], 'yes': [True], 'both': [False, True]}[args.fuse]
    results = []
    try:
        for fuse in fuses:
            r = benchmark(
                args.config, checkpoint=args.checkpoint, device=args.device,
                num_images=args.num_images, num_warmup=args.warmup,
                fuse=fuse, shape=args.shape, data=args.data,
                threads=args.threads, cfg_options=args.cfg_options,
                num_workers=args.num_workers,
                log=None if args.quiet else print,
                allow_partial=args.allow_partial)
            print(r.summary(), flush=True)
            print()
            results.append(r)
    except (UserError, FileNotFoundError, ValueError, RuntimeError) as e:
        from iformer_mm.engine.errors_cli import debug_requested
        if debug_requested():
            raise
        print(f'benchmark.py: error: {e} (--debug for the traceback)',
              file=sys.stderr)
        return 2
    if len(results) > 1:
        print(format_results(results))
    if args.out:
        dump_json(results, args.out)
        print(f'results written to {args.out}')
    return 0


if __name__ == '__main__':
    # A user mistake: one line on stderr, exit code 2 (--debug: traceback).
    from iformer_mm.engine.errors_cli import run_tool
    sys.exit(run_tool(main, prog='benchmark.py'))
