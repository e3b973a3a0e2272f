"""Check a config's datasets before anything is built.

A real dataset that is not on disk (``data/coco``,
``data/ade/ADEChallengeData2016``, ``data/imagenet``) stops the run with a
:class:`DatasetNotFoundError` that names the missing path, the expected
layout and the documentation section, instead of a traceback from deep in a
loader. Toy datasets (:data:`~iformer_mm.datasets.builders.TOY_DATASETS`)
are generated here instead.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import ConfigError, UserError

DOC = 'docs/getting_started.md'

LAYOUTS = {
    'coco': ('#coco-data-layout', """\
data/coco/
├── annotations/
│   ├── instances_train2017.json
│   └── instances_val2017.json
├── train2017/   (118k images)
└── val2017/     (5k images)"""),
    'ade': ('#ade20k-data-layout', """\
data/ade/ADEChallengeData2016/
├── images/
│   ├── training/      (*.jpg)
│   └── validation/    (*.jpg)
└── annotations/
    ├── training/      (*.png)
    └── validation/    (*.png)"""),
    'imagenet': ('#imagenet-data-layout', """\
data/imagenet/
├── train/   (one folder per class: n01440764/*.JPEG ...)
├── val/     (class folders, or flat images listed in meta/val.txt)
└── meta/    (optional: train.txt, val.txt, "<relative path> <label>")"""),
}

# dataset type -> layout key
_KIND = {
    'CocoDataset': 'coco',
    'ADE20KDataset': 'ade',
    'ImageNet': 'imagenet',
    'ImageNet21k': 'imagenet',
}


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset a config needs is not on disk."""


def _iter_datasets(cfg: dict) -> Iterable[dict]:
    """Leaf dataset configs, through wrappers (Repeat/Concat/ClassBalanced)."""
    if not isinstance(cfg, dict):
        return
    if 'dataset' in cfg and isinstance(cfg['dataset'], dict):
        yield from _iter_datasets(cfg['dataset'])
    elif 'datasets' in cfg:
        for sub in cfg['datasets']:
            yield from _iter_datasets(sub)
    else:
        yield cfg


def _prefix(data_prefix, key: str) -> str:
    if isinstance(data_prefix, dict):
        return data_prefix.get(key, '') or ''
    return data_prefix or ''


def _join(root: str, path: str) -> str:
    if not path:
        return root
    return path if osp.isabs(path) or not root else osp.join(root, path)


def _required_paths(ds: dict) -> Tuple[Optional[str], List[str]]:
    """(layout kind, paths that must exist) for one dataset config."""
    type_name = ds.get('type', '')
    if not isinstance(type_name, str):
        type_name = getattr(type_name, '__name__', '')
    type_name = type_name.split('.')[-1]
    root = ds.get('data_root', '') or ''
    kind = _KIND.get(type_name)
    paths: List[str] = []
    if kind == 'coco':
        if ds.get('ann_file'):
            paths.append(_join(root, ds['ann_file']))
        paths.append(_join(root, _prefix(ds.get('data_prefix'), 'img')))
    elif kind == 'ade':
        prefix = ds.get('data_prefix', {})
        paths.append(_join(root, _prefix(prefix, 'img_path')))
        paths.append(_join(root, _prefix(prefix, 'seg_map_path')))
    elif kind == 'imagenet':
        split = ds.get('split', '')
        prefix = _prefix(ds.get('data_prefix'), 'img_path') or split
        if ds.get('ann_file'):
            paths.append(_join(root, ds['ann_file']))
        paths.append(_join(root, prefix))
    elif root:
        paths.append(root)
    return kind, [p for p in paths if p]


def _message(kind: Optional[str], missing: str, split: str) -> str:
    lines = [f'The {split} dataset is missing: {missing!r} does not exist.']
    if kind in LAYOUTS:
        anchor, tree = LAYOUTS[kind]
        lines += ['Expected layout (relative to the directory you run from, '
                  'or set data_root with --cfg-options):', tree,
                  f'See {DOC}{anchor} for how to download and arrange it.']
    else:
        lines.append(f'See {DOC} for the expected data layouts.')
    lines.append('To try the pipeline without real data, use the toy '
                 'configs in configs/toy/, which generate their data.')
    return '\n'.join(lines)


def check_datasets(cfg, splits: Sequence[str] = ('train', 'val')) -> None:
    """Generate toy datasets and check real ones for ``splits``' loaders.

    Raises:
        DatasetNotFoundError: a real dataset's files are not on disk.
        ConfigError: two datasets share a toy data_root with different
            ``toy_cfg``.
        UserError: a toy data_root holds data the generator did not write.
    """
    from .builders import TOY_DATASETS, prepare_toy_dataset
    toy: List[Tuple[str, str, dict]] = []  # (split, type, dataset cfg)
    real: List[Tuple[str, dict]] = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader', None)
        if not loader or (split == 'val' and not cfg.get('val_cfg', None)):
            continue
        for ds in _iter_datasets(loader.get('dataset', {})):
            type_name = ds.get('type', '')
            name = type_name.split('.')[-1] if isinstance(type_name,
                                                          str) else ''
            if name in TOY_DATASETS:
                toy.append((split, name, ds))
            else:
                real.append((split, ds))
    # Datasets sharing a toy data_root must agree on its content before
    # anything is generated: otherwise one regenerates it under the other.
    toy_roots: Dict[str, Tuple[str, dict]] = {}
    for split, name, ds in toy:
        root = osp.abspath(ds.get('data_root') or TOY_DATASETS[name][1])
        toy_cfg = dict(ds.get('toy_cfg') or {})
        seen = toy_roots.setdefault(root, (split, toy_cfg))
        if seen[1] != toy_cfg:
            raise ConfigError(
                f'the {seen[0]} and {split} datasets share the toy data_root '
                f'{root!r} but not their toy_cfg ({seen[1]} vs {toy_cfg}); '
                f'one would regenerate the folder under the other: give them '
                f'the same toy_cfg, or different data_root.')
    for split, name, ds in toy:
        prepare_toy_dataset(name, ds.get('data_root'), ds.get('toy_cfg'))
    for split, ds in real:
        kind, paths = _required_paths(ds)
        for path in paths:
            if not osp.exists(path):
                raise DatasetNotFoundError(_message(kind, path, split))
