"""Toy datasets that generate their files on first use.

Each is registered in mmengine's root ``DATASETS`` (so it builds under the
mmdet, mmseg and mmpretrain scopes) as a function that makes sure the toy
data exists under ``data_root`` and returns the codebase's own dataset
class over it: mmdet's ``CocoDataset``, mmseg's ``BaseSegDataset`` (ADE20K
folder conventions) and mmpretrain's ``CustomDataset``. The codebase is
imported only when such a dataset is built.

``toy_cfg`` (optional) is passed to the generator (``num_train``, ``size``,
``seed`` ...); the train and val datasets of one config must use the same.
"""
from __future__ import annotations

from typing import Optional

from mmengine.registry import DATASETS

from .toy import (TOY_ADE_CLASSES, TOY_ADE_PALETTE, TOY_COCO_CLASSES,
                  make_toy_ade, make_toy_coco, make_toy_imagenet)

#: dataset type -> (generator, default data_root)
TOY_DATASETS = {
    'ToyCocoDataset': (make_toy_coco, 'data/toy_coco'),
    'ToyADE20KDataset': (make_toy_ade, 'data/toy_ade'),
    'ToyImageNet': (make_toy_imagenet, 'data/toy_imagenet'),
}


def prepare_toy_dataset(type_name: str, data_root: Optional[str] = None,
                        toy_cfg: Optional[dict] = None) -> str:
    """Generate the toy dataset ``type_name`` under ``data_root`` if needed."""
    generator, default_root = TOY_DATASETS[type_name]
    return generator(data_root or default_root, **(toy_cfg or {}))


@DATASETS.register_module(name='ToyCocoDataset')
def build_toy_coco(data_root: str = 'data/toy_coco',
                   toy_cfg: Optional[dict] = None, **kwargs):
    """mmdet ``CocoDataset`` over the generated toy COCO instances."""
    from mmdet.datasets import CocoDataset
    prepare_toy_dataset('ToyCocoDataset', data_root, toy_cfg)
    kwargs.setdefault('metainfo', dict(classes=TOY_COCO_CLASSES))
    return CocoDataset(data_root=data_root, **kwargs)


@DATASETS.register_module(name='ToyADE20KDataset')
def build_toy_ade20k(data_root: str = 'data/toy_ade',
                     toy_cfg: Optional[dict] = None, **kwargs):
    """mmseg dataset over the generated ADE20K-style toy folder."""
    from mmseg.datasets import BaseSegDataset
    prepare_toy_dataset('ToyADE20KDataset', data_root, toy_cfg)
    kwargs.setdefault('metainfo', dict(classes=TOY_ADE_CLASSES,
                                       palette=TOY_ADE_PALETTE))
    kwargs.setdefault('img_suffix', '.jpg')
    kwargs.setdefault('seg_map_suffix', '.png')
    kwargs.setdefault('reduce_zero_label', True)
    return BaseSegDataset(data_root=data_root, **kwargs)


@DATASETS.register_module(name='ToyImageNet')
def build_toy_imagenet(data_root: str = 'data/toy_imagenet',
                       split: str = 'train', toy_cfg: Optional[dict] = None,
                       **kwargs):
    """mmpretrain ``CustomDataset`` over ``<data_root>/<split>/<class>/``."""
    from mmpretrain.datasets import CustomDataset
    prepare_toy_dataset('ToyImageNet', data_root, toy_cfg)
    kwargs.setdefault('data_prefix', split)
    return CustomDataset(data_root=data_root, **kwargs)
