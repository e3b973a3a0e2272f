"""The toy data is what it claims to be, and the evaluation on it gives
known answers.

* every COCO annotation agrees with its own mask (the box is the
  rasterised polygon's bounds, the area its pixel count) and with the image
  (the pixels under the mask are one flat colour, unlike the noise around);
* the ADE20K-style labels hold exactly the classes the images show;
* mmdet's ``CocoMetric``, configured as the toy config configures it, gives
  AP 1.0 for the ground truth, 0.0 for the right boxes with wrong labels and
  0.1 for boxes whose IoU with the truth lies in (0.5, 0.55) (only the 0.50
  threshold of the ten counts).
"""
import glob
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest

from iformer_mm.datasets.toy import (TOY_ADE_CLASSES, TOY_COCO_CLASSES,
                                     make_toy_ade, make_toy_coco)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_DET = osp.join(ROOT, 'configs', 'toy', 'maskrcnn_iformer_t_toy.py')


def _poly_mask(seg, h, w):
    mask = np.zeros((h, w), np.uint8)
    for poly in seg:
        pts = np.round(np.asarray(poly).reshape(-1, 2)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


@pytest.fixture(scope='module')
def toy_coco(tmp_path_factory):
    root = make_toy_coco(str(tmp_path_factory.mktemp('d') / 'toy_coco'),
                         num_train=6, num_val=6, size=128, seed=3)
    return root


def _load(root, split):
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        return json.load(f)


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_annotations_agree_with_masks_and_images(toy_coco, split):
    coco = _load(toy_coco, split)
    assert [c['name'] for c in coco['categories']] == list(TOY_COCO_CLASSES)
    images = {im['id']: im for im in coco['images']}
    assert coco['annotations'], 'no annotations generated'
    flat_checked = 0
    for ann in coco['annotations']:
        im = images[ann['image_id']]
        img = cv2.imread(osp.join(toy_coco, split, im['file_name']))
        assert img.shape[:2] == (im['height'], im['width'])
        mask = _poly_mask(ann['segmentation'], im['height'], im['width'])
        ys, xs = np.nonzero(mask)
        # COCO boxes are [x, y, w, h] in pixels covered by the mask.
        x, y, w, h = ann['bbox']
        assert (x, y) == (xs.min(), ys.min()), ann
        assert (x + w - 1, y + h - 1) == (xs.max(), ys.max()), ann
        assert 1 <= ann['category_id'] <= len(TOY_COCO_CLASSES)
        # The polygon's area and its rasterised pixel count agree within
        # the boundary pixels (about the perimeter).
        perimeter = 2 * (w + h)
        assert abs(ann['area'] - mask.sum()) <= perimeter, ann
        assert ann['area'] > 0.25 * w * h
        # The image shows the shape: its interior is one flat colour (JPEG
        # noise aside), far flatter than the noisy background.
        inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
        if inner.sum() >= 20:
            inside = img[inner.astype(bool)].astype(float)
            outside = img[~cv2.dilate(mask.astype(np.uint8),
                                      np.ones((5, 5), np.uint8)).astype(
                                          bool)].astype(float)
            assert inside.std(0).max() < 0.5 * outside.std(0).max(), ann
            flat_checked += 1
    # shapes too small for an eroded interior are the exception
    assert flat_checked >= 0.8 * len(coco['annotations'])


def test_ade_labels_show_the_drawn_classes(tmp_path):
    root = make_toy_ade(str(tmp_path / 'toy_ade'), num_train=2, num_val=3,
                        size=96, seed=5)
    for split in ('training', 'validation'):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        names = sorted(n[:-4] for n in __import__('os').listdir(img_dir))
        assert names
        for name in names:
            img = cv2.imread(osp.join(img_dir, name + '.jpg'))
            label = cv2.imread(osp.join(ann_dir, name + '.png'),
                               cv2.IMREAD_UNCHANGED)
            assert label.shape == img.shape[:2]
            values = set(np.unique(label).tolist())
            # 0 = other (border), 1 = ground, 2.. = shapes.
            assert values <= set(range(len(TOY_ADE_CLASSES) + 1))
            assert {0, 1} <= values
            assert values - {0, 1}, f'{name}: no shape in the label'
            # The 2-pixel border is 'other' where no shape covers it:
            # never ground.
            border = np.concatenate([label[:2].ravel(), label[-2:].ravel(),
                                     label[:, :2].ravel(),
                                     label[:, -2:].ravel()])
            assert 1 not in set(border.tolist())
            assert (border == 0).mean() > 0.5
            # ... and exactly 2 pixels wide: no 'other' inside it
            assert 0 not in set(label[2:-2, 2:-2].ravel().tolist())
            assert img.shape[1] in (96, 120)  # 1 or 1.25 times the height
            for cls in values - {0, 1}:
                region = cv2.erode((label == cls).astype(np.uint8),
                                   np.ones((5, 5), np.uint8)).astype(bool)
                # Each shape (a connected component: two shapes of a class
                # may differ in colour) is one flat colour in the image.
                n, comp = cv2.connectedComponents(region.astype(np.uint8))
                parts = [comp == k for k in range(1, n)]
                # slivers too small to judge are left out, never all
                judged = [p for p in parts if p.sum() >= 20]
                assert judged, (name, cls)
                for part in judged:
                    assert img[part].astype(float).std(0).max() < 12


def _metric(ann_file):
    pytest.importorskip('mmdet')
    from mmengine.config import Config
    from mmdet.registry import METRICS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(TOY_DET)
    ev = cfg.val_evaluator
    ev = ev[0] if isinstance(ev, (list, tuple)) else ev
    ev = dict(ev)
    ev['ann_file'] = ann_file
    ev.pop('outfile_prefix', None)
    metric = METRICS.build(ev)
    coco = json.load(open(ann_file))
    metric.dataset_meta = dict(classes=TOY_COCO_CLASSES)
    return metric, coco


def _predictions(coco, boxes_fn, label_fn):
    import torch
    from pycocotools import mask as mask_util
    preds = []
    for im in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        boxes, labels, masks = [], [], []
        for a in anns:
            x, y, w, h = a['bbox']
            boxes.append(boxes_fn([x, y, x + w, y + h]))
            labels.append(label_fn(a['category_id'] - 1))
            rle = mask_util.frPyObjects(a['segmentation'], im['height'],
                                        im['width'])
            masks.append(mask_util.decode(mask_util.merge(rle)))
        pred = dict(
            bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            scores=torch.ones(len(boxes)),
            labels=torch.tensor(labels, dtype=torch.long),
            masks=torch.from_numpy(np.stack(masks)).bool() if masks else
            torch.zeros((0, im['height'], im['width']), dtype=torch.bool))
        preds.append(dict(img_id=im['id'], ori_shape=(im['height'],
                                                      im['width']),
                          pred_instances=pred))
    return preds


@pytest.mark.parametrize('case,expected', [
    ('truth', 1.0), ('wrong_labels', 0.0), ('iou_0.53', 0.1)])
def test_coco_metric_known_answers(toy_coco, case, expected):
    ann_file = osp.join(toy_coco, 'annotations', 'instances_val.json')
    metric, coco = _metric(ann_file)
    n = len(TOY_COCO_CLASSES)
    if case == 'truth':
        preds = _predictions(coco, lambda b: b, lambda c: c)
    elif case == 'wrong_labels':
        preds = _predictions(coco, lambda b: b, lambda c: (c + 1) % n)
    else:
        # Shift by 0.31 w: IoU = (w - d) / (w + d) = 0.526 for every box.
        def shift(b):
            d = 0.31 * (b[2] - b[0])
            return [b[0] + d, b[1], b[2] + d, b[3]]
        preds = _predictions(coco, shift, lambda c: c)
    metric.process({}, preds)
    results = metric.evaluate(len(preds))
    assert results['coco/bbox_mAP'] == pytest.approx(expected, abs=1e-3)
    if case != 'iou_0.53':
        # Masks are the truth's own masks: same answer for segm.
        assert results['coco/segm_mAP'] == pytest.approx(expected, abs=1e-3)
    else:
        assert results['coco/bbox_mAP_50'] == pytest.approx(1.0, abs=1e-3)
        assert results['coco/bbox_mAP_75'] == pytest.approx(0.0, abs=1e-3)


def _generated(root):
    return sorted(osp.relpath(p, root) for p in glob.glob(
        osp.join(root, '**', '*.*'), recursive=True))


def test_default_sizes_are_the_documented_ones(tmp_path):
    """The toy configs' documented results rely on these sizes."""
    from iformer_mm.datasets.toy import TOY_CLS_CLASSES, make_toy_imagenet
    coco = make_toy_coco(str(tmp_path / 'coco'))
    assert [len(_load(coco, s)['images']) for s in ('train', 'val')] == \
        [32, 8]
    assert {im['height'] for im in _load(coco, 'val')['images']} == {128}
    ade = make_toy_ade(str(tmp_path / 'ade'))
    assert [len(glob.glob(osp.join(ade, 'images', s, '*.jpg')))
            for s in ('training', 'validation')] == [24, 6]
    assert {cv2.imread(p).shape[0] for p in glob.glob(
        osp.join(ade, 'images', 'validation', '*.jpg'))} == {128}
    imnet = make_toy_imagenet(str(tmp_path / 'imnet'))
    for split, n in (('train', 12), ('val', 4)):
        for kind in TOY_CLS_CLASSES:
            files = glob.glob(osp.join(imnet, split, kind, '*.png'))
            assert len(files) == n, (split, kind)
    assert cv2.imread(files[0]).shape == (64, 64, 3)


def test_shapes_are_bright_on_a_dark_background(toy_coco):
    coco = _load(toy_coco, 'val')
    for im in coco['images']:
        img = cv2.imread(osp.join(toy_coco, 'val', im['file_name']))
        anns = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        shapes = np.zeros(img.shape[:2], bool)
        for a in anns:
            mask = _poly_mask(a['segmentation'], *img.shape[:2])
            inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5)))
            # JPEG rounding: a few levels either side
            assert img[inner.astype(bool)].min() >= 130 - 8, a['id']
            shapes |= mask
        outer = ~cv2.dilate(shapes.astype(np.uint8),
                            np.ones((7, 7))).astype(bool)
        background = img[outer]
        assert background.max() <= 129 + 8
        assert background.std() > 3  # noisy, not flat


def _principal_axes(mask):
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], 1).astype(float)
    centre = pts.mean(0)
    eig = np.linalg.eigvalsh(np.cov((pts - centre).T))
    dist = np.linalg.norm(pts - centre, axis=1)
    return eig[0] / eig[1], dist, mask.sum()


def test_classification_classes_look_like_their_names(tmp_path):
    """A bar is one long line, a cross two, a ring a circle's outline, a
    square / circle a filled blob."""
    from iformer_mm.datasets.toy import make_toy_imagenet
    root = make_toy_imagenet(str(tmp_path / 'imnet'), num_train_per_class=4,
                             num_val_per_class=0, size=96, seed=1)
    for kind in ('bar', 'cross', 'ring', 'square', 'circle'):
        for path in sorted(glob.glob(osp.join(root, 'train', kind, '*'))):
            img = cv2.imread(path)
            fg = (img >= 130).all(2)
            fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN,
                                  np.ones((2, 2))).astype(bool)
            ratio, dist, area = _principal_axes(fg)
            if kind == 'bar':
                assert ratio < 0.12, (kind, path, ratio)
            elif kind == 'cross':
                # two diagonals of a square: equal spread along both axes,
                # thin strokes (little of the bounding square is covered)
                assert ratio > 0.6, (kind, path, ratio)
                assert area < 0.5 * np.ptp(dist) ** 2 * 2, (kind, path)
                # the two strokes join opposite corners of one square: the
                # cross is its own mirror image about the box's vertical
                ys, xs = np.nonzero(fg)
                box = fg[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
                mirrored = box[:, ::-1]
                iou = (box & mirrored).sum() / (box | mirrored).sum()
                assert iou > 0.75, (kind, path, iou)
                assert 0.85 < box.shape[0] / box.shape[1] < 1.15, path
            elif kind == 'ring':
                assert ratio > 0.6, (kind, path, ratio)
                # an outline: distances to the centre cluster near r
                assert np.percentile(dist, 10) > 0.6 * dist.max(), path
            else:
                assert ratio > 0.6 and \
                    np.percentile(dist, 10) < 0.35 * dist.max(), (kind, path)


def test_coco_category_ids_are_one_based_and_used(toy_coco):
    for split in ('train', 'val'):
        coco = _load(toy_coco, split)
        ids = [c['id'] for c in coco['categories']]
        assert ids == list(range(1, len(TOY_COCO_CLASSES) + 1))
        used = {a['category_id'] for a in coco['annotations']}
        assert used <= set(ids)


def test_ade_shapes_have_the_documented_sizes(tmp_path):
    """Radii between 12% and 30% of the image side: each shape's bounding
    box spans between 0.12 and 0.62 of the side."""
    size = 128
    root = make_toy_ade(str(tmp_path / 'ade'), num_train=6, num_val=0,
                        size=size, seed=2)
    spans = []
    for path in glob.glob(osp.join(root, 'annotations', 'training', '*')):
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        n, comp = cv2.connectedComponents((label >= 2).astype(np.uint8))
        for i in range(1, n):
            ys, xs = np.nonzero(comp == i)
            spans.append(max(np.ptp(ys), np.ptp(xs)) + 1)
    assert len(spans) >= 6
    assert min(spans) >= 0.12 * size and max(spans) <= 0.62 * size, spans


# ---------------------------------------------------------------------------
# generation races: the processes of a distributed run all call the
# generator; whichever finishes first wins and nobody sees a partial copy
# ---------------------------------------------------------------------------
def _tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _write_tiny(path):
    os.makedirs(os.path.join(path, 'a'))
    with open(os.path.join(path, 'a', 'x.txt'), 'w') as f:
        f.write('data')


def test_a_copy_finished_meanwhile_by_another_process_is_kept(tmp_path):
    from iformer_mm.datasets.toy import generate_atomically
    root = str(tmp_path / 'toy')
    params = dict(kind='tiny', version=1)

    def slow_writer(path):
        # another process completes the same dataset while we write ours
        generate_atomically(root, params, _write_tiny)
        _write_tiny(path)
        with open(os.path.join(path, 'a', 'x.txt'), 'w') as f:
            f.write('late')
    assert generate_atomically(root, params, slow_writer) == root
    assert _tree(root)['a/x.txt'] == b'data'  # the first copy, untouched
    assert sorted(os.listdir(tmp_path)) == ['toy']  # no temporary left


def test_an_empty_directory_made_meanwhile_is_filled(tmp_path):
    from iformer_mm.datasets.toy import generate_atomically
    root = str(tmp_path / 'toy')
    params = dict(kind='tiny', version=1)

    def writer(path):
        os.makedirs(root)  # e.g. the user's mkdir, or a launcher's
        _write_tiny(path)
    generate_atomically(root, params, writer)
    assert _tree(root)['a/x.txt'] == b'data'
    assert sorted(os.listdir(tmp_path)) == ['toy']


def test_an_old_own_copy_is_swapped_whole(tmp_path):
    """A copy of other params is moved aside and removed only after the new
    one is in place; nothing of it is left, nor any temporary."""
    from iformer_mm.datasets.toy import generate_atomically
    root = str(tmp_path / 'toy')
    generate_atomically(root, dict(kind='tiny', version=1), _write_tiny)

    def other(path):
        os.makedirs(os.path.join(path, 'b'))
        with open(os.path.join(path, 'b', 'y.txt'), 'w') as f:
            f.write('new')
    generate_atomically(root, dict(kind='tiny', version=2), other)
    tree = _tree(root)
    assert tree['b/y.txt'] == b'new' and 'a/x.txt' not in tree
    assert sorted(os.listdir(tmp_path)) == ['toy']


def test_a_failed_writer_leaves_the_old_copy_and_no_temporary(tmp_path):
    from iformer_mm.datasets.toy import generate_atomically
    root = str(tmp_path / 'toy')
    generate_atomically(root, dict(kind='tiny', version=1), _write_tiny)
    before = _tree(root)

    def broken(path):
        _write_tiny(path)
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        generate_atomically(root, dict(kind='tiny', version=2), broken)
    assert _tree(root) == before
    assert sorted(os.listdir(tmp_path)) == ['toy']


def test_an_unreadable_stamp_means_regenerate(tmp_path):
    from iformer_mm.datasets.toy import STAMP, generate_atomically
    root = tmp_path / 'toy'
    params = dict(kind='tiny', version=1)
    generate_atomically(str(root), params, _write_tiny)
    (root / STAMP).write_text('{not json')
    (root / 'a' / 'x.txt').write_text('stale')
    generate_atomically(str(root), params, _write_tiny)
    assert _tree(root)['a/x.txt'] == b'data'
    (root / STAMP).write_text('[1, 2]')  # JSON, but not a stamp
    (root / 'a' / 'x.txt').write_text('stale')
    generate_atomically(str(root), params, _write_tiny)
    assert _tree(root)['a/x.txt'] == b'data'


def test_coco_shapes_are_what_their_category_says(toy_coco):
    """A triangle covers at most half of its box (any triangle does), a
    circle about pi/4 of it, a square at least half (rotated by 45 degrees)
    and up to all of it; a circle's outline has many vertices."""
    ratios = {name: [] for name in TOY_COCO_CLASSES}
    for split in ('train', 'val'):
        coco = _load(toy_coco, split)
        names = {c['id']: c['name'] for c in coco['categories']}
        for ann in coco['annotations']:
            x, y, w, h = ann['bbox']
            name = names[ann['category_id']]
            ratios[name].append(ann['area'] / (w * h))
            vertices = len(ann['segmentation'][0]) // 2
            assert vertices == {'square': 4, 'triangle': 3}.get(
                name, vertices) and (name != 'circle' or vertices >= 12), ann
    assert all(ratios.values()), {k: len(v) for k, v in ratios.items()}
    assert max(ratios['triangle']) <= 0.56, ratios['triangle']
    assert all(0.7 <= r <= 0.86 for r in ratios['circle']), ratios['circle']
    assert all(0.45 <= r <= 1.0 for r in ratios['square']), ratios['square']


def test_coco_ids_are_unique_small_positive_integers(toy_coco):
    """Image and annotation ids are unique across both splits and fit the
    int32 that COCO tools (pycocotools' C code, faster-coco-eval) use."""
    image_ids, ann_ids = [], []
    for split in ('train', 'val'):
        coco = _load(toy_coco, split)
        image_ids += [im['id'] for im in coco['images']]
        ann_ids += [a['id'] for a in coco['annotations']]
    for ids in (image_ids, ann_ids):
        assert len(set(ids)) == len(ids)
        assert all(isinstance(i, int) and 0 < i < 2**31 for i in ids)


def test_coco_images_and_triangles_have_the_documented_geometry(toy_coco):
    """Images are 128 high and 128 or 160 wide; a triangle is equilateral
    (its three sides equal up to the rounding of its vertices)."""
    widths, sides = set(), []
    for split in ('train', 'val'):
        coco = _load(toy_coco, split)
        widths |= {(im['height'], im['width']) for im in coco['images']}
        names = {c['id']: c['name'] for c in coco['categories']}
        for ann in coco['annotations']:
            if names[ann['category_id']] != 'triangle':
                continue
            pts = np.asarray(ann['segmentation'][0], float).reshape(-1, 2)
            d = [np.hypot(*(pts[i] - pts[(i + 1) % 3])) for i in range(3)]
            sides.append(d)
            assert max(d) - min(d) <= 2.5, d
    assert widths == {(128, 128), (128, 160)}
    assert sides


def test_coco_shapes_never_overlap_and_stay_inside(toy_coco):
    """Shapes are placed so that their bounding squares do not overlap and
    keep a pixel of margin: every object is whole and alone."""
    for split in ('train', 'val'):
        coco = _load(toy_coco, split)
        images = {im['id']: im for im in coco['images']}
        by_image = {}
        for ann in coco['annotations']:
            by_image.setdefault(ann['image_id'], []).append(ann['bbox'])
        for image_id, boxes in by_image.items():
            im = images[image_id]
            for x, y, w, h in boxes:
                assert x >= 1 and y >= 1, (x, y)
                assert x + w <= im['width'] - 1 and \
                    y + h <= im['height'] - 1, (x, y, w, h, im)
            for i, (x1, y1, w1, h1) in enumerate(boxes):
                for x2, y2, w2, h2 in boxes[i + 1:]:
                    apart = x1 + w1 <= x2 or x2 + w2 <= x1 or \
                        y1 + h1 <= y2 or y2 + h2 <= y1
                    assert apart, (image_id, boxes)


# The content of each toy dataset at its default arguments, per
# TOY_FORMAT_VERSION: sha256 over every image array as drawn (before JPEG or
# PNG encoding, so that the codec's version does not matter), its file name,
# shape and encoding parameters (JPEG quality), and the annotation files'
# bytes.
TOY_CONTENT = {
    1: dict(
        coco='4ec46ecb96650dc9e33ad93ecd289b6cbdd86e402d82f58757d8c9a39'
             '2408c33',
        ade='35250de69ad956d596bae836761e0afc1346d3dcc9748b4c0f6304c486c6'
            '7dda',
        imagenet='52eda559107ce623c16fd29f99bb47d1f775d4d1fc79f91dbf0c3576bf'
                 '43a581'),
}


def _content_digest(generate, root, monkeypatch):
    import hashlib
    digest = hashlib.sha256()
    real = cv2.imwrite

    def record(path, img, *args):
        digest.update(osp.basename(path).encode())
        digest.update(str(img.shape).encode())
        digest.update(img.tobytes())
        digest.update(repr([list(a) for a in args]).encode())  # e.g. quality
        return real(path, img, *args)
    with monkeypatch.context() as m:
        m.setattr(cv2, 'imwrite', record)
        root = generate(root)
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith('.json') and not name.startswith('.'):
                digest.update(name.encode())
                with open(osp.join(folder, name), 'rb') as f:
                    digest.update(f.read())
    return digest.hexdigest()


@pytest.mark.parametrize('kind', ['coco', 'ade', 'imagenet'])
def test_content_changes_only_with_the_format_version(tmp_path, monkeypatch,
                                                      kind):
    """A copy on disk is reused while its stamp's TOY_FORMAT_VERSION matches:
    a change to what the generator draws (a colour range, a rotation, a
    margin, a stroke) without a version bump would leave users training on
    old data while docs/benchmarks.md's toy results describe the new. So
    the content at the default arguments is pinned per version. If this
    fails after an intended change: bump TOY_FORMAT_VERSION, pin the new
    digests here, and re-measure the documented toy results."""
    from iformer_mm.datasets.toy import TOY_FORMAT_VERSION, TOY_GENERATORS
    pinned = TOY_CONTENT.get(TOY_FORMAT_VERSION)
    assert pinned is not None, \
        f'no content pinned for TOY_FORMAT_VERSION {TOY_FORMAT_VERSION}'
    got = _content_digest(TOY_GENERATORS[kind], str(tmp_path / kind),
                          monkeypatch)
    assert got == pinned[kind], (
        f'toy {kind} content changed without a TOY_FORMAT_VERSION bump '
        f'(digest {got})')
