# Paper Table 9: 300 epochs, AdamW (0.9, 0.999), base lr 4e-3 for a batch of
# 4096, weight decay 0.05 (none on norms and biases, as in ConvNeXt's
# recipe), 20 linear warmup epochs then cosine decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=4e-3, weight_decay=0.05, eps=1e-8,
        betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        begin=0,
        end=20,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-6,
        by_epoch=True,
        begin=20,
        end=300)
]

# Resumable*: mmengine's loops that resume mid-epoch exactly (iformer_mm.engine)
train_cfg = dict(
    type='ResumableEpochBasedTrainLoop', max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# lr is for a total batch of 4096 (128/GPU x 32 GPUs, or 8 GPUs with
# optim_wrapper.accumulative_counts=4 as in the authors' runs);
# `--auto-scale-lr` rescales it to the run's batch.
auto_scale_lr = dict(base_batch_size=4096)
