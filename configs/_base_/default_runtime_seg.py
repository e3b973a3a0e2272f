# Runtime for mmseg configs (as mmseg's default_runtime.py).
default_scope = 'mmseg'
custom_imports = dict(imports=['iformer_mm'], allow_failed_imports=False)
# mmengine's Runner with a work-dir lock, resume from the newest intact
# checkpoint, config and dataset checks, and CPU-only distributed runs;
# upstream tools (mmdet's, mmseg's, mmpretrain's train.py, mim) build it too.
runner_type = 'IFormerRunner'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=4000),
    # load_from through the project's strict loader (tools/test.py
    # --allow-partial: strict=False)
    strict_load=dict(type='StrictLoadFromHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # gloo on a machine without CUDA
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)

log_level = 'INFO'
load_from = None
resume = False

tta_model = dict(type='SegTTAModel')
