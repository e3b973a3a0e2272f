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

What is timed (``model.test_step`` per image) and on which input: see
``iformer_mm/apis/benchmark.py``.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from iformer_mm.apis.build import (add_model_arguments,  # noqa: E402
                                   model_options)
from iformer_mm.engine.errors_cli import (add_debug_argument,  # noqa: E402
                                          run_tool)

#: --fuse: the runs, unfused (False) and / or fused (True)
FUSES = {'no': [False], 'yes': [True], 'both': [False, True]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Benchmark whole-model inference speed of a config.')
    p.add_argument('config', help='config file (its default_scope decides '
                   'mmdet / mmseg / mmpretrain)')
    add_model_arguments(p)
    p.add_argument('--num-images', type=int, default=20,
                   help='timed images (default 20)')
    p.add_argument('--warmup', type=int, default=3,
                   help='untimed warm-up images (default 3)')
    p.add_argument('--fuse', nargs='?', const='yes', default='no',
                   choices=list(FUSES),
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
    p.add_argument('--quiet', action='store_true', help='no progress lines')
    add_debug_argument(p)
    args = p.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = args.shape * 2
        if len(args.shape) != 2 or min(args.shape) < 32:
            p.error('--shape takes H W (or one side), each >= 32')
    return args


def _main(argv):
    args = parse_args(argv)
    from iformer_mm.apis.benchmark import benchmark, format_results
    results = []
    for fuse in FUSES[args.fuse]:
        result = benchmark(
            args.config, **model_options(args), num_images=args.num_images,
            num_warmup=args.warmup, fuse=fuse, shape=args.shape,
            data=args.data, threads=args.threads,
            num_workers=args.num_workers, log=None if args.quiet else print)
        print(result.summary(), flush=True)
        print()
        results.append(result)
    if len(results) > 1:
        print(format_results(results))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump([r.to_dict() for r in results], f, indent=2)
        print(f'results written to {args.out}')


def main(argv=None) -> int:
    """A user mistake: one line on stderr, exit code 2 (--debug: traceback)."""
    return run_tool(_main, argv, prog='benchmark.py')


if __name__ == '__main__':
    sys.exit(main())
