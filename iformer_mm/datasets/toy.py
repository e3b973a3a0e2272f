"""Deterministic toy datasets, generated on demand.

Three small datasets in the layouts of the real ones, so that every config
can run end to end on a machine without COCO, ADE20K or ImageNet:

* ``make_toy_coco``: COCO-format instances (``annotations/instances_*.json``
  and ``train/``, ``val/`` image folders), coloured squares, triangles and
  circles on a noisy background, each with its polygon mask.
* ``make_toy_ade``: an ADE20K-style folder (``images/{training,validation}``,
  ``annotations/{training,validation}``) whose PNG labels use ADE20K's
  convention, 0 = "other" (ignored with ``reduce_zero_label=True``), then the
  classes from 1.
* ``make_toy_imagenet``: ``train/<class>/*.png`` and ``val/<class>/*.png``
  folders (mmpretrain ``CustomDataset`` layout), one shape per class.

Default sizes, which the toy configs and their documented results rely on:
COCO 32 train / 8 val images of 128 px (1-3 shapes each), ADE 24 / 6
images of 128 px, ImageNet 12 / 4 images of 64 px per class (6 classes).
Shapes are bright on a dark noisy background (every channel < 130): every
channel >= 130 in COCO and ImageNet; in ADE each class has its own bright
channel (>= 200, the others 40-129), so that the short toy run's mIoU
shows learning.

The same arguments always give the same bytes. Generation writes into a
temporary folder beside the target and renames it into place, so that
several processes of a distributed run can call it at once.
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

TOY_COCO_CLASSES = ('square', 'triangle', 'circle')
TOY_ADE_CLASSES = ('ground', 'square', 'triangle', 'circle')
TOY_ADE_PALETTE = [[120, 120, 120], [220, 20, 60], [0, 128, 255],
                   [255, 200, 0]]
TOY_CLS_CLASSES = ('square', 'triangle', 'circle', 'cross', 'ring', 'bar')
# circles are drawn as regular polygons with this many vertices
_CIRCLE_VERTICES = 24

# Bumped whenever the generated content changes, so that an old copy on
# disk is regenerated instead of silently reused.
TOY_FORMAT_VERSION = 1
STAMP = '.toy_complete'


# --------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------
def _shape_polygon(rng: np.random.RandomState, kind: str, cx: float,
                   cy: float, r: float) -> np.ndarray:
    """Vertices (N, 2) of a ``kind`` shape of radius ``r`` at (cx, cy)."""
    theta = rng.uniform(0, 2 * math.pi)
    if kind == 'square':
        angles = theta + np.arange(4) * math.pi / 2
    elif kind == 'triangle':
        angles = theta + np.arange(3) * 2 * math.pi / 3
    elif kind == 'circle':
        angles = np.arange(_CIRCLE_VERTICES) * 2 * math.pi / _CIRCLE_VERTICES
    else:
        raise ValueError(f'unknown shape {kind!r}')
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    return pts


def _background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    base = rng.randint(0, 90, size=3)
    noise = rng.randint(0, 40, size=(h, w, 3))
    return np.clip(base[None, None] + noise, 0, 255).astype(np.uint8)


def _colour(rng: np.random.RandomState) -> Tuple[int, int, int]:
    return tuple(int(c) for c in rng.randint(130, 256, size=3))


#: toy ADE: each shape class has its own hue (a bright dominant channel),
#: so that a short CPU run can tell the classes apart and its mIoU shows
#: learning; the shape still says which class it is.
_ADE_DOMINANT_CHANNEL = {'square': 2, 'triangle': 1, 'circle': 0}  # BGR


def _class_colour(rng: np.random.RandomState,
                  kind: str) -> Tuple[int, int, int]:
    colour = rng.randint(40, 130, size=3)
    colour[_ADE_DOMINANT_CHANNEL[kind]] = rng.randint(200, 256)
    return tuple(int(c) for c in colour)


def _place(rng, h, w, boxes,
           r_range) -> Optional[Tuple[float, float, float]]:
    """A centre and radius whose bounding square overlaps no earlier one."""
    for _ in range(50):
        r = rng.uniform(*r_range)
        cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
        box = (cx - r, cy - r, cx + r, cy + r)
        if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1]
               or box[1] > b[3] for b in boxes):
            boxes.append(box)
            return cx, cy, r
    return None


# --------------------------------------------------------------------------
# Atomic, versioned generation
# --------------------------------------------------------------------------
def _read_stamp(root: str):
    """The stamp of a generated directory: ``None`` if it has none, else a
    dict (``params`` and ``files``; ``{}`` for an unreadable stamp)."""
    stamp = osp.join(root, STAMP)
    if not osp.isfile(stamp):
        return None
    try:
        with open(stamp) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    if 'params' not in data:  # the first stamp format: the params alone
        return dict(params=data, files=None)
    return data


def _is_complete(root: str, params: dict) -> bool:
    stamp = _read_stamp(root)
    return bool(stamp) and stamp.get('params') == params


def _list_files(root: str) -> List[str]:
    """Every file and directory under ``root``, relative, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = osp.relpath(dirpath, root)
        for name in dirnames + filenames:
            out.append(osp.normpath(osp.join(rel, name)))
    return sorted(out)


def _not_ours(root: str, why: str):
    from ..errors import UserError
    return UserError(
        f'toy data_root {root!r} {why}; the toy data generator only replaces '
        f'folders it created itself (they carry a {STAMP} file) and left '
        f'it untouched: set data_root to a new or empty directory.')


def _check_replaceable(root: str) -> None:
    """Raise unless ``root`` may be replaced by a fresh toy dataset: it
    carries our stamp and holds nothing but the files the stamp lists."""
    if osp.islink(root) or not osp.isdir(root):
        raise _not_ours(root, 'exists and is not a directory')
    stamp = _read_stamp(root)
    if stamp is None:
        raise _not_ours(root, 'exists and was not created by the toy data '
                        f'generator (no {STAMP} file)')
    listed = stamp.get('files')
    if listed is not None:
        extra = sorted(set(_list_files(root)) - set(listed) - {STAMP})
        if extra:
            raise _not_ours(root, f'holds {len(extra)} file(s) the generator '
                            f'did not write (e.g. {extra[0]!r})')


def generate_atomically(root: str, params: dict,
                         writer: Callable[[str], None]) -> str:
    """Make ``root`` hold the toy dataset ``params`` and return its path.

    A complete copy (same stamp) is reused. Otherwise the data is written
    into a temporary folder beside ``root`` and renamed into place, so that
    concurrent callers (the processes of a distributed run) never see a
    partial copy. An existing ``root`` is replaced only if it is an empty
    directory or a toy dataset this generator wrote (its stamp lists its
    files and nothing else is in it); anything else raises
    :class:`~iformer_mm.errors.UserError` and is left untouched.
    """
    root = osp.abspath(root)
    if _is_complete(root, params):
        return root
    if osp.lexists(root) and not (osp.isdir(root) and not osp.islink(root)
                                  and not os.listdir(root)):
        _check_replaceable(root)
    parent = osp.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.tmp_' + osp.basename(root), dir=parent)
    old = None
    try:
        writer(tmp)
        with open(osp.join(tmp, STAMP), 'w') as f:
            json.dump(dict(params=params, files=_list_files(tmp)), f)
        if osp.lexists(root):
            if _is_complete(root, params):
                return root  # another process finished first
            if osp.isdir(root) and not os.listdir(root):
                try:
                    os.rmdir(root)  # only ever removes an empty directory
                except OSError:
                    pass
            else:
                # One of our own, with other params: move it aside first,
                # so that the swap is a rename and nothing is half-deleted.
                _check_replaceable(root)
                old = tempfile.mkdtemp(prefix='.old_' + osp.basename(root),
                                       dir=parent)
                try:
                    os.rename(root, osp.join(old, 'data'))
                except FileNotFoundError:
                    pass  # another process moved it first
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished first; its copy is identical.
            if not _is_complete(root, params):
                raise
    finally:
        if osp.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return root


# --------------------------------------------------------------------------
# COCO instances
# --------------------------------------------------------------------------
def _coco_split(rng, out_dir: str, split: str, num: int, size: int,
                first_id: int) -> dict:
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    ann_id = first_id * 100
    for i in range(num):
        img_id = first_id + i
        h = size
        w = int(size * rng.choice([1.0, 1.25]))
        img = _background(rng, h, w)
        boxes: List[tuple] = []
        for _ in range(rng.randint(1, 4)):
            placed = _place(rng, h, w, boxes, (size * 0.12, size * 0.28))
            if placed is None:
                continue
            label = rng.randint(len(TOY_COCO_CLASSES))
            pts = _shape_polygon(rng, TOY_COCO_CLASSES[label], *placed)
            ipts = np.round(pts).astype(np.int32)
            cv2.fillPoly(img, [ipts], _colour(rng))
            x0, y0 = ipts.min(0)
            x1, y1 = ipts.max(0)
            ann_id += 1
            annotations.append(dict(
                id=ann_id, image_id=img_id, category_id=label + 1,
                segmentation=[ipts.astype(float).reshape(-1).tolist()],
                area=float(cv2.contourArea(ipts)),
                bbox=[float(x0), float(y0), float(x1 - x0 + 1),
                      float(y1 - y0 + 1)],
                iscrowd=0))
        name = f'{img_id:06d}.jpg'
        cv2.imwrite(osp.join(img_dir, name), img,
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=img_id, file_name=name, height=h, width=w))
    return dict(
        info=dict(description=f'iformer-mm toy COCO ({split})'),
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=n, supercategory='shape')
                    for i, n in enumerate(TOY_COCO_CLASSES)])


def make_toy_coco(root: str = 'data/toy_coco', num_train: int = 32,
                  num_val: int = 8, size: int = 128, seed: int = 0) -> str:
    """Generate (once) a COCO-format toy instance dataset under ``root``.

    Layout: ``annotations/instances_{train,val}.json``, ``train/``, ``val/``.
    Returns the absolute root.
    """
    params = dict(kind='coco', version=TOY_FORMAT_VERSION,
                  num_train=num_train, num_val=num_val, size=size, seed=seed)

    def writer(out: str) -> None:
        rng = np.random.RandomState(seed)
        os.makedirs(osp.join(out, 'annotations'))
        for split, num, first in (('train', num_train, 1),
                                  ('val', num_val, 100001)):
            coco = _coco_split(rng, out, split, num, size, first)
            with open(osp.join(out, 'annotations',
                               f'instances_{split}.json'), 'w') as f:
                json.dump(coco, f)

    return generate_atomically(root, params, writer)


# --------------------------------------------------------------------------
# ADE20K-style semantic segmentation
# --------------------------------------------------------------------------
def make_toy_ade(root: str = 'data/toy_ade', num_train: int = 24,
                 num_val: int = 6, size: int = 128, seed: int = 0) -> str:
    """Generate (once) an ADE20K-style toy segmentation folder.

    Labels: 0 = other (a thin border, ignored with ``reduce_zero_label``),
    1 = ground, 2.. = the shapes of :data:`TOY_ADE_CLASSES`.
    """
    params = dict(kind='ade', version=TOY_FORMAT_VERSION,
                  colours='by-class', num_train=num_train, num_val=num_val, size=size, seed=seed)

    def writer(out: str) -> None:
        rng = np.random.RandomState(seed)
        for split, num in (('training', num_train),
                           ('validation', num_val)):
            img_dir = osp.join(out, 'images', split)
            ann_dir = osp.join(out, 'annotations', split)
            os.makedirs(img_dir)
            os.makedirs(ann_dir)
            for i in range(num):
                h, w = size, int(size * rng.choice([1.0, 1.25]))
                img = _background(rng, h, w)
                label = np.ones((h, w), np.uint8)  # ground
                label[:2] = label[-2:] = 0
                label[:, :2] = label[:, -2:] = 0
                boxes: List[tuple] = []
                for _ in range(rng.randint(1, 4)):
                    placed = _place(rng, h, w, boxes,
                                    (size * 0.12, size * 0.3))
                    if placed is None:
                        continue
                    cls = rng.randint(1, len(TOY_ADE_CLASSES))
                    pts = np.round(_shape_polygon(
                        rng, TOY_ADE_CLASSES[cls], *placed)).astype(np.int32)
                    cv2.fillPoly(img, [pts],
                                 _class_colour(rng, TOY_ADE_CLASSES[cls]))
                    cv2.fillPoly(label, [pts], int(cls + 1))
                name = f'ADE_toy_{split}_{i:08d}'
                cv2.imwrite(osp.join(img_dir, name + '.jpg'), img,
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                cv2.imwrite(osp.join(ann_dir, name + '.png'), label)

    return generate_atomically(root, params, writer)


# --------------------------------------------------------------------------
# ImageNet-style classification folders
# --------------------------------------------------------------------------
def _draw_cls(rng, kind: str, size: int) -> np.ndarray:
    img = _background(rng, size, size)
    r = rng.uniform(size * 0.22, size * 0.4)
    c = size / 2 + rng.uniform(-size * 0.08, size * 0.08, size=2)
    colour = _colour(rng)
    thick = max(2, size // 12)
    if kind in ('square', 'triangle', 'circle'):
        pts = np.round(_shape_polygon(rng, kind, c[0], c[1], r))
        cv2.fillPoly(img, [pts.astype(np.int32)], colour)
    elif kind == 'cross':
        a, b = (c - r).astype(int), (c + r).astype(int)
        cv2.line(img, tuple(map(int, a)), tuple(map(int, b)), colour, thick)
        cv2.line(img, (int(a[0]), int(b[1])), (int(b[0]), int(a[1])), colour,
                 thick)
    elif kind == 'ring':
        cv2.circle(img, tuple(int(v) for v in c), int(r), colour, thick)
    elif kind == 'bar':
        ang = rng.uniform(0, math.pi)
        d = np.array([math.cos(ang), math.sin(ang)]) * r
        cv2.line(img, tuple(int(v) for v in c - d),
                 tuple(int(v) for v in c + d), colour, thick * 2)
    return img


def make_toy_imagenet(root: str = 'data/toy_imagenet',
                      num_train_per_class: int = 12,
                      num_val_per_class: int = 4, size: int = 64,
                      seed: int = 0) -> str:
    """Generate (once) ``train/<class>/*.png`` and ``val/<class>/*.png``."""
    params = dict(kind='imagenet', version=TOY_FORMAT_VERSION,
                  num_train_per_class=num_train_per_class,
                  num_val_per_class=num_val_per_class, size=size, seed=seed)

    def writer(out: str) -> None:
        rng = np.random.RandomState(seed)
        for split, num in (('train', num_train_per_class),
                           ('val', num_val_per_class)):
            for kind in TOY_CLS_CLASSES:
                d = osp.join(out, split, kind)
                os.makedirs(d)
                for i in range(num):
                    cv2.imwrite(osp.join(d, f'{kind}_{i:04d}.png'),
                                _draw_cls(rng, kind, size))

    return generate_atomically(root, params, writer)


TOY_GENERATORS: Dict[str, Callable[..., str]] = dict(
    coco=make_toy_coco, ade=make_toy_ade, imagenet=make_toy_imagenet)
