#!/usr/bin/env python
"""Browse a config's dataset after its pipeline, with the ground truth drawn.

As ``tools/analysis_tools/browse_dataset.py`` of mmdet, mmseg and
mmpretrain, for detection, segmentation and classification configs alike
(the config's ``default_scope`` decides which library's visualizer draws)::

    python tools/browse_dataset.py configs/toy/maskrcnn_iformer_t_toy.py \\
        --output-dir work_dirs/browse --not-show --show-number 4

Boxes and masks (mmdet), the label map (mmseg) or the class name
(mmpretrain) are drawn on each image as the pipeline delivers it (after
resizing, flipping, ...). Toy datasets are generated when missing; a real
dataset that is not on disk is reported in one line (exit 2).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from iformer_mm.apis.build import add_cfg_options  # noqa: E402
from iformer_mm.engine.errors_cli import (add_debug_argument,  # noqa: E402
                                          run_tool)
from iformer_mm.errors import ConfigError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config', help='config file')
    p.add_argument('--output-dir', default=None,
                   help='save the drawn images here (nothing is saved '
                   'without it)')
    p.add_argument('--not-show', action='store_true',
                   help='do not open a window per image')
    p.add_argument('--show-interval', type=float, default=2,
                   help='seconds each image is shown')
    p.add_argument('--show-number', '-n', type=int, default=sys.maxsize,
                   help='browse at most this many items')
    p.add_argument('--phase', '-p', default='train',
                   choices=['train', 'val', 'test'],
                   help='which dataloader\'s dataset to browse')
    add_cfg_options(p)
    add_debug_argument(p)
    return p.parse_args(argv)


def _to_rgb(item):
    """The packed CHW tensor as an HWC uint8 RGB array (pipelines load
    BGR, as cv2 does)."""
    import numpy as np
    img = item['inputs'].permute(1, 2, 0).numpy()
    if img.shape[-1] == 3:
        img = img[..., ::-1]
    return np.ascontiguousarray(img.clip(0, 255).astype('uint8'))


def draw_mmdet(visualizer, item, name, show, wait, out_file):
    from mmdet.structures.bbox import BaseBoxes
    from mmdet.structures.mask import BitmapMasks, PolygonMasks
    sample = item['data_samples'].numpy()
    gt = sample.gt_instances
    if isinstance(gt.get('bboxes', None), BaseBoxes):
        gt.bboxes = gt.bboxes.tensor
    masks = gt.get('masks', None)
    if isinstance(masks, (BitmapMasks, PolygonMasks)):
        gt.masks = masks.to_ndarray().astype(bool)
    sample.gt_instances = gt
    visualizer.add_datasample(name, _to_rgb(item), sample, draw_pred=False,
                              show=show, wait_time=wait, out_file=out_file)


def draw_mmseg(visualizer, item, name, show, wait, out_file):
    visualizer.add_datasample(name, _to_rgb(item),
                              item['data_samples'].numpy(), draw_pred=False,
                              show=show, wait_time=wait, out_file=out_file)


def draw_mmpretrain(visualizer, item, name, show, wait, out_file):
    visualizer.visualize_cls(_to_rgb(item), item['data_samples'],
                             draw_pred=False, show=show, wait_time=wait,
                             out_file=out_file, name=name)


DRAW = {'mmdet': draw_mmdet, 'mmseg': draw_mmseg,
        'mmpretrain': draw_mmpretrain}


def browse(cfg, output_dir=None, show=False, wait=2.0, number=None,
           phase='train'):
    """Draw the first ``number`` items of the ``phase`` dataset; returns the
    files written."""
    import importlib

    from mmengine.utils import ProgressBar

    from iformer_mm.config import init_scope
    from iformer_mm.datasets.checks import check_datasets

    scope = init_scope(cfg)
    loader = cfg.get(f'{phase}_dataloader', None)
    if not loader:
        raise ConfigError(f'the config has no {phase}_dataloader; try '
                          '--phase train')
    check_datasets(cfg, splits=(phase,))
    registry = importlib.import_module(f'{scope}.registry')
    dataset = registry.DATASETS.build(loader['dataset'])
    vis_cfg = dict(cfg.visualizer)
    vis_cfg.setdefault('name', 'browse_dataset')  # mmpretrain's lacks one
    visualizer = registry.VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = dataset.metainfo
    total = min(len(dataset), number or len(dataset))
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
    written, names = [], set()
    bar = ProgressBar(total)
    for idx in range(total):
        item = dataset[idx]
        path = item['data_samples'].get('img_path', None) or f'{idx:06d}.png'
        name = osp.basename(path)
        if name in names:  # the same image twice (repeated datasets)
            name = f'{idx:06d}_{name}'
        names.add(name)
        out_file = osp.join(output_dir, name) if output_dir else None
        DRAW[scope](visualizer, item, name, show, wait, out_file)
        if out_file:
            written.append(out_file)
        bar.update()
    print()
    return written


def _main(argv):
    args = parse_args(argv)
    if args.not_show and not args.output_dir:
        raise ConfigError('with --not-show and no --output-dir nothing would '
                          'be shown or saved; add --output-dir DIR')
    if args.show_number < 1:
        raise ConfigError('--show-number must be at least 1')
    from iformer_mm.config import load_config
    cfg = load_config(args.config, args.cfg_options)
    files = browse(cfg, args.output_dir, show=not args.not_show,
                   wait=args.show_interval, number=args.show_number,
                   phase=args.phase)
    if files:
        print(f'wrote {len(files)} images to {args.output_dir}')


def main(argv=None) -> int:
    """A user mistake: one line on stderr, exit code 2 (--debug: traceback)."""
    return run_tool(_main, argv, prog='browse_dataset.py')


if __name__ == '__main__':
    sys.exit(main())
