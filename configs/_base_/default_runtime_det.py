# Runtime for mmdet configs (as mmdet's default_runtime.py), plus the import
# that registers the iFormer backbone and our datasets/wrappers.
default_scope = 'mmdet'
custom_imports = dict(imports=['iformer_mm'], allow_failed_imports=False)
# mmengine's Runner with a work-dir lock, resume from the newest intact
# checkpoint, config and dataset checks, and CPU-only distributed runs;
# upstream tools (mmdet's, mmseg's, mmpretrain's train.py, mim) build it too.
runner_type = 'IFormerRunner'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=1),
    # load_from through the project's strict loader (tools/test.py
    # --allow-partial: strict=False)
    strict_load=dict(type='StrictLoadFromHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # gloo on a machine without CUDA
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

log_level = 'INFO'
load_from = None
resume = False
