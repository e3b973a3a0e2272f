# iFormer-H on ImageNet-1k, the paper's recipe (Table 9): 300 epochs,
# AdamW 8e-3 for a batch of 8192, weight decay 0.05, cosine with 20 warmup
# epochs, RandAugment (9, 0.5), mixup 0.8, cutmix 1.0, random erasing 0.25,
# label smoothing 0.1, drop path 0.6.
# Batch 8192 = 128/GPU x 64 GPUs (or fewer GPUs with
# optim_wrapper.accumulative_counts); layer scale 1e-6 is part of the arch.
_base_ = [
    './_base_/models/iformer_cls.py',
    './_base_/datasets/imagenet_bs128_randaug.py',
    './_base_/schedules/cls_adamw_300e.py',
    './_base_/default_runtime_cls.py',
]
model = dict(
    backbone=dict(arch='h', drop_path_rate=0.6),
    head=dict(in_channels=768))

optim_wrapper = dict(optimizer=dict(lr=8e-3))
auto_scale_lr = dict(base_batch_size=8192)
