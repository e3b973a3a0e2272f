# iFormer image classifier for mmpretrain: backbone (last stage, global
# attention) -> global average pooling -> the authors' BN + Linear head.
# Label smoothing 0.1 with Mixup 0.8 / CutMix 1.0 (paper Table 9).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='IFormer',
        arch='t',
        out_indices=(3, ),
        attention='global',
        drop_path_rate=0.0),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='IFormerClsHead',
        num_classes=1000,
        in_channels=256,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5),
        init_cfg=None),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)
