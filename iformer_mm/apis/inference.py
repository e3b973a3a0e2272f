"""Image demo: predictions of a detection, segmentation or classification
config drawn on images, through the OpenMMLab inferencers.

* detection: ``mmdet.apis.DetInferencer`` (boxes, masks when the model has a
  mask head, class names and scores above ``score_thr``);
* segmentation: ``mmseg.apis.MMSegInferencer`` (colour overlay of the
  predicted classes with ``opacity``);
* classification: ``mmpretrain.apis.ImageClassificationInferencer`` (the
  top-``topk`` classes and scores written on the image).

The task follows the config's ``default_scope``. Without a checkpoint the
model is random-init (pretrained ``init_cfg`` entries are ignored, nothing is
downloaded) and the predictions are meaningless but drawn all the same. Class
names come from the checkpoint's meta when it has them, else from the
config's test dataset.

Every drawn image is written to ``<out_dir>/vis/`` and a JSON summary of the
predictions to ``<out_dir>/predictions.json``.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
import os.path as osp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
from mmengine.config import Config

from ..errors import InputError
from ..models.checkpoint import check_checkpoint_path
from ..config import init_scope, load_config, strip_pretrained, task_of
from .build import dataset_meta, num_classes_of

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


@dataclass
class DemoResult:
    task: str
    out_dir: str
    vis_files: List[str]
    pred_file: str
    predictions: List[Dict[str, Any]] = field(default_factory=list)


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


def _palette(n: int, seed: int = 42) -> List[List[int]]:
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(n, 3)).tolist()


def _config_meta(cfg: Config) -> Dict[str, Any]:
    """Classes/palette of the config's test dataset, if they fit the model."""
    meta = dataset_meta(cfg)
    classes = meta.get('classes')
    n = num_classes_of(cfg)
    if not classes or (n is not None and len(classes) != n):
        return {}
    palette = meta.get('palette')
    if palette is None or len(palette) < len(classes):
        palette = _palette(len(classes))
    return dict(classes=tuple(classes),
                palette=[tuple(int(v) for v in c) for c in palette])


# --------------------------------------------------------------------------
# Inferencers
# --------------------------------------------------------------------------
# Every inferencer is built without weights (random init, no download) and
# the checkpoint is then loaded by the project's one loader,
# iformer_mm.models.checkpoint.load_model_checkpoint: strict unless
# allow_partial, any layout. Class names: the checkpoint's dataset_meta when
# it fits the model, else the config's test dataset.
def _quiet_init(cls, **kwargs):
    """``cls(weights=None, ...)`` without its 'randomly initialized model'
    warnings (the weights are loaded next)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return cls(**kwargs)


def _load_weights(model, checkpoint, allow_partial) -> Dict[str, Any]:
    """Load ``checkpoint`` into ``model``; the file's ``dataset_meta``."""
    if checkpoint is None:
        return {}
    from ..models.checkpoint import load_model_checkpoint
    report = load_model_checkpoint(model, checkpoint,
                                   strict=not allow_partial)
    meta = report.meta.get('dataset_meta') or {}
    return {str(k).lower(): v for k, v in dict(meta).items()}


def _pick_meta(cfg, ckpt_meta: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint's classes if they fit the model, else the config's."""
    n = num_classes_of(cfg)
    classes = ckpt_meta.get('classes')
    if classes and (n is None or len(classes) == n):
        meta = dict(ckpt_meta, classes=tuple(classes))
        palette = meta.get('palette')
        if palette is None or isinstance(palette, str) or \
                len(palette) < len(classes):
            palette = _palette(len(classes))
        meta['palette'] = [tuple(int(v) for v in c) for c in palette]
        return meta
    return _config_meta(cfg)


def _det_inferencer(cfg, checkpoint, device, allow_partial=False):
    from mmdet.apis import DetInferencer
    inf = _quiet_init(DetInferencer, model=cfg, weights=None, device=device,
                      scope='mmdet', show_progress=False)
    meta = _pick_meta(cfg, _load_weights(inf.model, checkpoint,
                                         allow_partial))
    if meta:
        inf.model.dataset_meta = dict(inf.model.dataset_meta, **meta)
        inf.visualizer.dataset_meta = inf.model.dataset_meta
    return inf


def _seg_inferencer(cfg, checkpoint, device, allow_partial=False):
    from mmseg.apis import MMSegInferencer
    inf = _quiet_init(MMSegInferencer, model=cfg, weights=None,
                      device=device, scope='mmseg')
    meta = _pick_meta(cfg, _load_weights(inf.model, checkpoint,
                                         allow_partial))
    if meta:
        inf.model.dataset_meta = meta
    return inf


_CLS_INFERENCER = None


def _cls_inferencer_class():
    """ImageClassificationInferencer that draws the top-k, not the top-1."""
    global _CLS_INFERENCER
    if _CLS_INFERENCER is not None:
        return _CLS_INFERENCER
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

    _CLS_INFERENCER = TopKClassificationInferencer
    return _CLS_INFERENCER


def _cls_inferencer(cfg, checkpoint, device, topk, allow_partial=False):
    cls = _cls_inferencer_class()
    inf = _quiet_init(cls, model=cfg, pretrained=False, device=device,
                      classes=None)
    meta = _pick_meta(cfg, _load_weights(inf.model, checkpoint,
                                         allow_partial))
    if meta:
        inf.classes = meta['classes']
    inf.topk = topk
    return inf


def build_inferencer(config: Union[str, Config],
                     checkpoint: Optional[str] = None, device: str = 'cpu',
                     cfg_options: Optional[dict] = None, topk: int = 5,
                     allow_partial: bool = False):
    """The OpenMMLab inferencer for a config's task (see module doc).

    The checkpoint is loaded strictly (see
    :func:`iformer_mm.models.checkpoint.load_model_checkpoint`) unless
    ``allow_partial``.
    """
    cfg = load_config(config, cfg_options)
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)  # before building anything
    task = task_of(cfg)
    init_scope(cfg)
    strip_pretrained(cfg.model)
    if task == 'detection':
        return task, _det_inferencer(cfg, checkpoint, device, allow_partial)
    if task == 'segmentation':
        return task, _seg_inferencer(cfg, checkpoint, device, allow_partial)
    return task, _cls_inferencer(cfg, checkpoint, device, topk,
                                 allow_partial)


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
    k = min(topk, scores.numel())
    values, indices = torch.topk(scores, k)
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
        raise ValueError(f'score_thr must be in [0, 1], got {score_thr}.')
    if topk < 1:
        raise ValueError(f'topk must be >= 1, got {topk}.')
    task, inf = build_inferencer(config, checkpoint, device, cfg_options,
                                 topk, allow_partial=allow_partial)
    if hasattr(inf, 'show_progress'):
        inf.show_progress = show_progress
    out_dir = str(out_dir)
    vis_dir = osp.join(out_dir, 'vis')
    os.makedirs(vis_dir, exist_ok=True)

    if task == 'detection':
        res = inf(images, batch_size=1, out_dir=out_dir,
                  pred_score_thr=score_thr, return_datasamples=True,
                  no_save_pred=True)
        samples = res['predictions']
        classes = inf.model.dataset_meta.get('classes')
        summaries = [_summarise_det(s, classes, score_thr) for s in samples]
        vis_files = [osp.join(vis_dir, osp.basename(p)) for p in images]
    elif task == 'segmentation':
        samples = inf(images, return_datasamples=True, batch_size=1,
                      out_dir=out_dir, img_out_dir='vis', opacity=opacity)
        if not isinstance(samples, list):
            samples = [samples]
        classes = inf.model.dataset_meta.get('classes')
        summaries = [_summarise_seg(s, classes) for s in samples]
        vis_files = [osp.join(vis_dir, osp.basename(p)) for p in images]
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
