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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    from iformer_mm.engine.errors_cli import add_debug_argument
    p = argparse.ArgumentParser(
        description='Draw predictions of a config on images.')
    p.add_argument('config', help='config file')
    p.add_argument('inputs', help='image file or folder of images')
    p.add_argument('--checkpoint', default=None,
                   help='checkpoint; random-init weights otherwise')
    p.add_argument('--out-dir', default='outputs/demo',
                   help='output folder (default outputs/demo)')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='detection: draw boxes scoring at least this')
    p.add_argument('--topk', type=int, default=5,
                   help='classification: classes drawn (default 5)')
    p.add_argument('--opacity', type=float, default=0.5,
                   help='segmentation: overlay opacity')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries, key=value')
    p.add_argument('--allow-partial', action='store_true',
                   help='load a checkpoint that does not fit the model '
                   '(missing, unexpected or wrong-shape keys) as far as it '
                   'fits, with a warning; by default that is an error')
    p.add_argument('--no-progress', action='store_true',
                   help='no progress bar over the images')
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from iformer_mm.errors import UserError
    from iformer_mm.apis.inference import run_demo
    try:
        result = run_demo(args.config, args.inputs,
                          checkpoint=args.checkpoint, out_dir=args.out_dir,
                          device=args.device, score_thr=args.score_thr,
                          topk=args.topk, opacity=args.opacity,
                          cfg_options=args.cfg_options,
                          allow_partial=args.allow_partial,
                          show_progress=not args.no_progress)
    except (UserError, FileNotFoundError, ValueError) as e:
        from iformer_mm.engine.errors_cli import debug_requested
        if debug_requested():
            raise
        print(f'demo.py: error: {e} (--debug for the traceback)',
              file=sys.stderr)
        return 2
    for pred in result.predictions:
        if result.task == 'classification':
            what = ', '.join(f'{t["class_name"]} {t["score"]:.3f}'
                             for t in pred['topk'])
        elif result.task == 'detection':
            what = f'{pred["num_drawn"]} of {pred["num_predictions"]} ' \
                   f'detections drawn'
        else:
            what = ', '.join(f'{c["class_name"]} {c["fraction"]:.0%}'
                             for c in pred['classes'][:5])
        print(f'{pred["image"]} -> {pred["vis"]}: {what}')
    print(f'{result.task}: {len(result.vis_files)} image(s) written to '
          f'{os.path.join(result.out_dir, "vis")}; predictions in '
          f'{result.pred_file}')
    return 0


if __name__ == '__main__':
    # A user mistake: one line on stderr, exit code 2 (--debug: traceback).
    from iformer_mm.engine.errors_cli import run_tool
    sys.exit(run_tool(main, prog='demo.py'))
