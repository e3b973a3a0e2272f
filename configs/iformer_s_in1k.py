# iFormer-S on ImageNet-1k, the paper's recipe (Table 9): 300 epochs,
# AdamW 4e-3 for a batch of 4096, weight decay 0.05, cosine with 20 warmup
# epochs, RandAugment (9, 0.5), mixup 0.8, cutmix 1.0, random erasing 0.25,
# label smoothing 0.1, drop path 0.0.
_base_ = [
    './_base_/models/iformer_cls.py',
    './_base_/datasets/imagenet_bs128_randaug.py',
    './_base_/schedules/cls_adamw_300e.py',
    './_base_/default_runtime_cls.py',
]
model = dict(
    backbone=dict(arch='s', drop_path_rate=0.0),
    head=dict(in_channels=320))
