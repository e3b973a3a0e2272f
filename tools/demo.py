#!/usr/bin/env python
"""Draw a config's predictions on an image or a folder of images.

Detection configs draw boxes and masks, segmentation configs a colour
overlay, classification configs the top-5 classes (the config's
``default_scope`` decides). Outputs: ``<out-dir>/vis/<image>`` and
``<out-dir>/predictions.json``.

Examples::

    python tools/demo.py configs/maskrcnn_iformer_t_coco.py demo.jpg \
        --checkpoint work_dirs/maskrcnn/epoch_12.pth --out-dir outputs/demo
    python tools/demo.py configs/toy/fpn_iformer_t_toy.py \
        data/toy_ade/images/validation \
        --device cpu

Without ``--checkpoint`` the model is random-init: the pictures show the
drawing works, not that the model does.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from iformer_mm.apis.build import (add_model_arguments,  # noqa: E402
                                   model_options)
from iformer_mm.engine.errors_cli import (add_debug_argument,  # noqa: E402
                                          run_tool)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Draw predictions of a config on images.')
    p.add_argument('config', help='config file')
    p.add_argument('inputs', help='image file or folder of images')
    add_model_arguments(p, device_help="'cpu' or 'cuda'")
    p.add_argument('--out-dir', default='outputs/demo',
                   help='output folder (default outputs/demo)')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='detection: draw boxes scoring at least this')
    p.add_argument('--topk', type=int, default=5,
                   help='classification: classes drawn (default 5)')
    p.add_argument('--opacity', type=float, default=0.5,
                   help='segmentation: overlay opacity')
    p.add_argument('--no-progress', action='store_true',
                   help='no progress bar over the images')
    add_debug_argument(p)
    return p.parse_args(argv)


def _what(task, pred) -> str:
    """One image's predictions in a few words."""
    if task == 'classification':
        return ', '.join(f'{t["class_name"]} {t["score"]:.3f}'
                         for t in pred['topk'])
    if task == 'detection':
        return f'{pred["num_drawn"]} of {pred["num_predictions"]} ' \
               f'detections drawn'
    return ', '.join(f'{c["class_name"]} {c["fraction"]:.0%}'
                     for c in pred['classes'][:5])


def _main(argv):
    args = parse_args(argv)
    from iformer_mm.apis.inference import run_demo
    result = run_demo(args.config, args.inputs, **model_options(args),
                      out_dir=args.out_dir, score_thr=args.score_thr,
                      topk=args.topk, opacity=args.opacity,
                      show_progress=not args.no_progress)
    for pred in result.predictions:
        print(f'{pred["image"]} -> {pred["vis"]}: {_what(result.task, pred)}')
    print(f'{result.task}: {len(result.vis_files)} image(s) written to '
          f'{osp.join(result.out_dir, "vis")}; predictions in '
          f'{result.pred_file}')


def main(argv=None) -> int:
    """A user mistake: one line on stderr, exit code 2 (--debug: traceback)."""
    return run_tool(_main, argv, prog='demo.py')


if __name__ == '__main__':
    sys.exit(main())
