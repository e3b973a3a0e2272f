"""Image demo: a config's predictions drawn on images by the OpenMMLab
inferencers of its task (``default_scope``): mmdet's ``DetInferencer``
(boxes, masks, scores of at least ``score_thr``), mmseg's
``MMSegInferencer`` (a colour overlay of ``opacity``) or mmpretrain's
``ImageClassificationInferencer`` (the top-``topk`` classes).

Each inferencer is built without weights (nothing is downloaded; without a
checkpoint the model stays random-init and the pictures show only that the
drawing works); a checkpoint is loaded by :func:`.build.load_weights`.
Class names: the checkpoint's ``dataset_meta`` when it fits the model,
else the config's test dataset. Outputs: ``<out_dir>/vis/`` and
``<out_dir>/predictions.json``.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import os.path as osp
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
from mmengine.config import Config

from ..config import init_scope, innermost_dataset, strip_pretrained
from ..errors import ConfigError, InputError
from .build import load_checked, load_weights

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


@dataclass
class DemoResult:
    task: str
    out_dir: str
    vis_files: List[str]
    pred_file: str
    predictions: List[Dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------
# Input images
# --------------------------------------------------------------------------
def _unreadable(path: str) -> Optional[str]:
    """Why ``path`` cannot be decoded as an image, or None if it can."""
    size = osp.getsize(path)
    if size == 0:
        return 'empty file (0 bytes)'
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return f'not a decodable image ({size} bytes)'
    return None


def collect_images(inputs: Union[str, Sequence[str]],
                   warn=None) -> List[str]:
    """Image files from a path, a folder (not recursive) or a list of both.

    In a folder, a file that cannot be decoded (zero bytes, corrupt) is
    skipped with a warning (``warn``, default: one line on stderr) and the
    rest are processed; an unreadable file named explicitly is an error.

    Raises:
        InputError: a path does not exist, a folder holds no readable image,
            or a named file is not a readable image.
    """
    if warn is None:
        def warn(msg):
            print(f'warning: {msg}', file=sys.stderr, flush=True)
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    images: List[str] = []
    for path in map(str, paths):
        if osp.isdir(path):
            found = sorted(
                osp.join(path, name) for name in os.listdir(path)
                if name.lower().endswith(IMG_EXTENSIONS)
                and osp.isfile(osp.join(path, name)))
            readable = []
            for image in found:
                why = _unreadable(image)
                if why is None:
                    readable.append(image)
                else:
                    warn(f'skipped {image}: {why}')
            if not readable:
                raise InputError(
                    f'No readable image ({", ".join(IMG_EXTENSIONS)}) in '
                    f'folder {path!r}'
                    + (f' ({len(found)} skipped)' if found else '') + '.')
            images += readable
        elif osp.isfile(path):
            if not path.lower().endswith(IMG_EXTENSIONS):
                raise InputError(f'Not an image file (expected one of '
                                 f'{", ".join(IMG_EXTENSIONS)}): {path!r}')
            why = _unreadable(path)
            if why is not None:
                raise InputError(f'{path!r} is not a readable image: {why}.')
            images.append(path)
        else:
            raise InputError(f'Input image or folder not found: {path!r}')
    if not images:
        raise InputError('No input image given.')
    stems = [Path(p).stem for p in images]
    if len(set(stems)) != len(stems):
        raise InputError('Input images must have distinct file names (the '
                         'outputs are named after them).')
    return images


# --------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------
def _num_classes(cfg: Config) -> Optional[int]:
    """``num_classes`` of the model's (first) head, if the config has one."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get('num_classes', None), int):
                found.append(node['num_classes'])
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(cfg.get('model', {}))
    return found[0] if found else None


def _test_dataset_meta(cfg: Config) -> Dict[str, Any]:
    """Classes (and palette) of the config's test dataset: its ``metainfo``
    in the config over its class's ``METAINFO``; when neither names the
    classes (a dataset registered as a function, classes from folders), the
    dataset's own, built lazily first. Call after :func:`init_scope`."""
    from mmengine.registry import DATASETS
    loader = cfg.get('test_dataloader', None) or cfg.get('val_dataloader',
                                                         None)
    if not loader or 'dataset' not in loader:
        return {}
    ds_cfg = innermost_dataset(loader['dataset'])
    meta: Dict[str, Any] = {}
    try:
        cls = DATASETS.get(ds_cfg.get('type'))
        meta.update(copy.deepcopy(getattr(cls, 'METAINFO', {}) or {}))
    except Exception:  # noqa: BLE001 - the type may be unknown here
        pass
    cfg_meta = dict(ds_cfg.get('metainfo', None) or {})
    if 'classes' in cfg_meta and 'palette' not in cfg_meta and len(
            meta.get('palette', []) or []) != len(cfg_meta['classes']):
        meta.pop('palette', None)  # the class's colours, for other classes
    meta.update(cfg_meta)
    for lazy in (True, False):
        if meta.get('classes'):
            break
        try:
            built = DATASETS.build(dict(copy.deepcopy(ds_cfg),
                                        lazy_init=lazy))
            meta.update(copy.deepcopy(dict(built.metainfo)))
        except Exception:  # noqa: BLE001 - best effort
            pass
    return meta


def _fitting(meta: Dict[str, Any], num_classes: Optional[int]):
    """``meta`` with its classes as a tuple and a palette of RGB tuples (a
    seeded random one where it has none, or too few colours), or None when
    it names no classes or not ``num_classes`` of them."""
    classes = meta.get('classes')
    if not classes or (num_classes is not None
                       and len(classes) != num_classes):
        return None
    palette = meta.get('palette')
    if palette is None or isinstance(palette, str) or \
            len(palette) < len(classes):
        palette = np.random.RandomState(42).randint(
            0, 256, size=(len(classes), 3)).tolist()
    return dict(meta, classes=tuple(classes),
                palette=[tuple(int(v) for v in c) for c in palette])


def _class_meta(cfg: Config, ckpt_meta: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint's ``dataset_meta`` if its classes fit the model, else
    the classes and palette of the config's test dataset, else ``{}``."""
    n = _num_classes(cfg)
    ckpt_meta = {str(k).lower(): v for k, v in ckpt_meta.items()}
    meta = _fitting(ckpt_meta, n)
    if meta is None:
        config_meta = _test_dataset_meta(cfg)
        meta = _fitting({k: config_meta[k] for k in ('classes', 'palette')
                         if k in config_meta}, n)
    return meta or {}


# --------------------------------------------------------------------------
# Inferencers
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _topk_classification_inferencer():
    """mmpretrain's ImageClassificationInferencer drawing the top-k classes
    (``self.topk``), not the top-1; tiny images are enlarged for the text."""
    import torch
    from mmpretrain.apis import ImageClassificationInferencer

    class TopKClassificationInferencer(ImageClassificationInferencer):
        topk = 5
        min_vis_size = 256

        def visualize(self, ori_inputs, preds, show=False, wait_time=0,
                      resize=None, rescale_factor=None, draw_score=True,
                      show_dir=None):
            if show_dir is not None:
                Path(show_dir).mkdir(parents=True, exist_ok=True)
            out = []
            for input_, pred in zip(ori_inputs, preds):
                sample = pred.clone()
                k = min(self.topk, sample.pred_score.numel())
                sample.set_pred_label(
                    torch.topk(sample.pred_score, k).indices.tolist())
                size = resize
                if size is None and rescale_factor is None and isinstance(
                        input_, str):
                    import mmcv
                    h, w = mmcv.imread(input_).shape[:2]
                    # make room for 5 lines of text on tiny images
                    size = self.min_vis_size if min(h, w) < \
                        self.min_vis_size else None
                vis = super().visualize([input_], [sample], show=show,
                                        wait_time=wait_time, resize=size,
                                        rescale_factor=rescale_factor,
                                        draw_score=draw_score,
                                        show_dir=show_dir)
                out += vis or []
            return out

    return TopKClassificationInferencer


def _new_inferencer(task: str, cfg: Config, device: str):
    """The task's inferencer without weights, quietly (its 'randomly
    initialized' warnings do not apply: the weights are loaded next)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if task == 'detection':
            from mmdet.apis import DetInferencer
            return DetInferencer(model=cfg, weights=None, device=device,
                                 scope='mmdet', show_progress=False)
        if task == 'segmentation':
            from mmseg.apis import MMSegInferencer
            return MMSegInferencer(model=cfg, weights=None, device=device,
                                   scope='mmseg')
        return _topk_classification_inferencer()(
            model=cfg, pretrained=False, device=device, classes=None)


def build_inferencer(config: Union[str, Config],
                     checkpoint: Optional[str] = None, device: str = 'cpu',
                     cfg_options: Optional[dict] = None, topk: int = 5,
                     allow_partial: bool = False):
    """``(task, inferencer)`` for a config (see the module's doc); the
    checkpoint is loaded strictly unless ``allow_partial``."""
    cfg, task = load_checked(config, cfg_options, checkpoint, device)
    init_scope(cfg)
    strip_pretrained(cfg.model)
    inf = _new_inferencer(task, cfg, device)
    ckpt_meta = {} if checkpoint is None else \
        load_weights(inf.model, checkpoint, allow_partial)
    meta = _class_meta(cfg, ckpt_meta)
    if task == 'classification':
        inf.topk = topk
        if meta:
            inf.classes = meta['classes']
    elif task == 'detection' and meta:
        inf.model.dataset_meta = dict(inf.model.dataset_meta, **meta)
        inf.visualizer.dataset_meta = inf.model.dataset_meta
    elif meta:
        inf.model.dataset_meta = meta
    return task, inf


# --------------------------------------------------------------------------
# Prediction summaries (JSON-friendly)
# --------------------------------------------------------------------------
def _name(classes, label: int) -> str:
    if classes is not None and 0 <= label < len(classes):
        return str(classes[label])
    return str(label)


def _summarise_det(sample, classes, score_thr: float) -> Dict[str, Any]:
    inst = sample.pred_instances
    scores = inst.scores.detach().cpu().numpy()
    keep = np.flatnonzero(scores >= score_thr)[:100]
    bboxes = inst.bboxes.detach().cpu().numpy()
    labels = inst.labels.detach().cpu().numpy()
    return dict(
        num_predictions=int(len(scores)),
        num_drawn=int(len(keep)),
        has_masks='masks' in inst,
        detections=[dict(label=int(labels[i]),
                         class_name=_name(classes, int(labels[i])),
                         score=round(float(scores[i]), 4),
                         bbox=[round(float(v), 1) for v in bboxes[i]])
                    for i in keep])


def _summarise_seg(sample, classes) -> Dict[str, Any]:
    seg = sample.pred_sem_seg.data.detach().cpu().numpy().reshape(-1)
    labels, counts = np.unique(seg, return_counts=True)
    order = np.argsort(-counts)
    return dict(
        shape=list(sample.pred_sem_seg.shape),
        classes=[dict(label=int(labels[i]),
                      class_name=_name(classes, int(labels[i])),
                      fraction=round(float(counts[i]) / seg.size, 4))
                 for i in order])


def _summarise_cls(sample, classes, topk: int) -> Dict[str, Any]:
    import torch
    scores = sample.pred_score.detach().cpu()
    values, indices = torch.topk(scores, min(topk, scores.numel()))
    return dict(topk=[dict(label=int(i), class_name=_name(classes, int(i)),
                           score=round(float(v), 4))
                      for v, i in zip(values.tolist(), indices.tolist())])


# --------------------------------------------------------------------------
# Demo
# --------------------------------------------------------------------------
def run_demo(config: Union[str, Config], inputs: Union[str, Sequence[str]],
             checkpoint: Optional[str] = None, out_dir: str = 'outputs/demo',
             device: str = 'cpu', score_thr: float = 0.3, topk: int = 5,
             opacity: float = 0.5,
             cfg_options: Optional[dict] = None,
             allow_partial: bool = False,
             show_progress: bool = True) -> DemoResult:
    """Run a config on images and write the drawn predictions.

    Args:
        config: Config path or Config.
        inputs: Image file, folder of images, or a list of them.
        checkpoint: Optional checkpoint; random-init weights otherwise.
        out_dir: Output folder (``vis/`` images + ``predictions.json``).
        device: ``'cpu'``, ``'cuda'`` ...
        score_thr: Detection score threshold for drawing.
        topk: Classification classes drawn.
        opacity: Segmentation overlay opacity.
        cfg_options: Overrides merged into the config.
        allow_partial: Load a checkpoint that does not fit the model as far
            as it fits (with a warning); by default that raises
            :class:`~iformer_mm.errors.CheckpointMismatchError`.
        show_progress: Show the inferencer's progress bar over the images
            (mmdet and mmseg; mmpretrain always shows it).
    """
    images = collect_images(inputs)  # check inputs before building a model
    if not 0 <= score_thr <= 1:
        raise ConfigError(f'score_thr must be in [0, 1], got {score_thr}.')
    if topk < 1:
        raise ConfigError(f'topk must be >= 1, got {topk}.')
    task, inf = build_inferencer(config, checkpoint, device, cfg_options,
                                 topk, allow_partial=allow_partial)
    if hasattr(inf, 'show_progress'):
        inf.show_progress = show_progress
    out_dir = str(out_dir)
    vis_dir = osp.join(out_dir, 'vis')
    os.makedirs(vis_dir, exist_ok=True)

    vis_files = [osp.join(vis_dir, osp.basename(p)) for p in images]
    if task == 'detection':
        samples = inf(images, batch_size=1, out_dir=out_dir,
                      pred_score_thr=score_thr, return_datasamples=True,
                      no_save_pred=True)['predictions']
        classes = inf.model.dataset_meta.get('classes')
        summaries = [_summarise_det(s, classes, score_thr) for s in samples]
    elif task == 'segmentation':
        samples = inf(images, return_datasamples=True, batch_size=1,
                      out_dir=out_dir, img_out_dir='vis', opacity=opacity)
        if not isinstance(samples, list):
            samples = [samples]
        classes = inf.model.dataset_meta.get('classes')
        summaries = [_summarise_seg(s, classes) for s in samples]
    else:
        samples = inf(images, return_datasamples=True, batch_size=1,
                      show_dir=vis_dir)
        summaries = [_summarise_cls(s, inf.classes, topk) for s in samples]
        vis_files = [osp.join(vis_dir, Path(p).stem + '.png')
                     for p in images]

    missing = [f for f in vis_files if not osp.isfile(f)]
    if missing:
        raise RuntimeError(f'The inferencer did not write {missing}.')
    predictions = [dict(image=p, vis=v, **s)
                   for p, v, s in zip(images, vis_files, summaries)]
    pred_file = osp.join(out_dir, 'predictions.json')
    with open(pred_file, 'w') as f:
        json.dump(dict(task=task, checkpoint=checkpoint,
                       predictions=predictions), f, indent=2)
    return DemoResult(task=task, out_dir=out_dir, vis_files=vis_files,
                      pred_file=pred_file, predictions=predictions)


__all__ = ['DemoResult', 'IMG_EXTENSIONS', 'build_inferencer',
           'collect_images', 'run_demo']
