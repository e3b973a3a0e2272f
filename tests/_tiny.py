"""A tiny mmengine training for the reliability tests: seconds, not minutes.

A 2-layer MLP with dropout on 8-d points of 3 classes. Each sample is
augmented with noise from numpy's and Python's global generators, and the
model draws dropout masks from torch's, so a resumed run only matches an
uninterrupted one if the batches *and* all three generators are restored.
Validation draws from them too (it must not shift training's numbers).

Registered in mmengine's root registries (``ReliabilityTinyNet``,
``ReliabilityTinyData``, ``ReliabilityTinyMetric``), so that a config file
can use them through ``custom_imports=['tests._tiny']``.
"""
import random

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, METRICS, MODELS
from torch import nn
from torch.utils.data import Dataset


@MODELS.register_module(name='ReliabilityTinyNet', force=True)
class TinyNet(BaseModel):

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, inputs, labels, mode='tensor'):
        x = torch.stack(list(inputs))
        y = torch.as_tensor(list(labels))
        logits = self.fc2(self.drop(torch.relu(self.fc1(x))))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, y))
        losses = F.cross_entropy(logits, y, reduction='none')
        return [dict(loss=float(v)) for v in losses]


@DATASETS.register_module(name='ReliabilityTinyData', force=True)
class TinyData(Dataset):
    """``num`` points of 3 clusters; noise from numpy and random per item."""

    def __init__(self, num: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = [i % 3 for i in range(num)]
        centres = torch.randn(3, 8, generator=g) * 2
        self.points = [centres[c] + torch.randn(8, generator=g) * 0.5
                       for c in self.labels]
        self.metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self):
        return len(self.points)

    def __getitem__(self, i):
        noise = torch.from_numpy(np.random.randn(8).astype(np.float32))
        sign = -1.0 if random.random() < 0.1 else 1.0
        return dict(inputs=self.points[i] * sign + 0.1 * noise,
                    labels=self.labels[i])


@METRICS.register_module(name='ReliabilityTinyMetric', force=True)
class TinyMetric(BaseMetric):

    calls = 0

    def process(self, data_batch, data_samples):
        self.results.extend(d['loss'] for d in data_samples)

    def compute_metrics(self, results):
        # `evaluations` grows at every validation: with save_best on it,
        # every validation makes a new best checkpoint.
        TinyMetric.calls += 1
        return dict(loss=float(np.mean(results)),
                    evaluations=TinyMetric.calls)


def tiny_cfg(work_dir: str, by_epoch: bool = True, *, epochs: int = 3,
             iters: int = 12, val_interval=None, iter_ckpt_interval=3,
             max_keep_ckpts: int = -1, save_best=None,
             infinite: bool = False, custom_hooks=()) -> dict:
    """A Runner config: 10 samples, batch 2 (5 batches a pass), SGD with
    momentum, a per-iteration warm-up and a step decay. Checkpoints: at
    every epoch (epoch-based) and every ``iter_ckpt_interval`` iterations
    (``None``: none; epoch-based runs then only save at epoch ends)."""
    loader = dict(
        dataset=dict(type='ReliabilityTinyData', num=10), batch_size=2,
        num_workers=0,
        sampler=dict(type='InfiniteSampler' if infinite else
                     'DefaultSampler', shuffle=True))
    val_loader = dict(
        dataset=dict(type='ReliabilityTinyData', num=4, seed=1),
        batch_size=2, num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=False))
    hooks = [dict(type='SafeCheckpointHook', by_epoch=False,
                  interval=iter_ckpt_interval,
                  max_keep_ckpts=max_keep_ckpts)] if iter_ckpt_interval \
        else []
    if by_epoch:
        train_cfg = dict(type='ResumableEpochBasedTrainLoop',
                         max_epochs=epochs, val_interval=val_interval or 1)
        checkpoint = dict(type='SafeCheckpointHook', by_epoch=True,
                          interval=1, max_keep_ckpts=max_keep_ckpts,
                          save_best=save_best)
        schedulers = [
            dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0,
                 end=4),
            dict(type='MultiStepLR', by_epoch=True, milestones=[2],
                 gamma=0.5)]
    else:
        train_cfg = dict(type='ResumableIterBasedTrainLoop', max_iters=iters,
                         val_interval=val_interval or 4)
        checkpoint = dict(type='SafeCheckpointHook', by_epoch=False,
                          interval=iter_ckpt_interval,
                          max_keep_ckpts=max_keep_ckpts, save_best=save_best)
        hooks = []
        schedulers = [
            dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0,
                 end=4),
            dict(type='MultiStepLR', by_epoch=False, milestones=[7],
                 gamma=0.5)]
    return dict(
        model=dict(type='ReliabilityTinyNet'),
        work_dir=work_dir,
        train_dataloader=loader,
        val_dataloader=val_loader,
        val_evaluator=dict(type='ReliabilityTinyMetric'),
        val_cfg=dict(),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=schedulers,
        default_hooks=dict(checkpoint=checkpoint,
                           strict_load=dict(type='StrictLoadFromHook'),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=hooks + list(custom_hooks),
        randomness=dict(seed=0, deterministic=True),
        env_cfg=dict(cudnn_benchmark=False,
                     dist_cfg=dict(backend='gloo')),
        default_scope='mmengine',
        runner_type='IFormerRunner',
    )


def scripted_runner(work_dir, scores, iters: int = 6, every: int = 2,
                    **checkpoint):
    """A tiny iteration-based run of ``iters`` iterations, validated and
    saved every ``every`` (2, 4 and 6 by default), whose metric returns
    ``scores[i]`` (a dict) at the i-th validation; ``checkpoint``: more
    arguments of its ``SafeCheckpointHook``."""
    import uuid

    from iformer_mm.engine import IFormerRunner

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x, mode='tensor'):
            out = self.linear(torch.stack(x))
            if mode == 'loss':
                return dict(loss=(out ** 2).mean())
            return list(out)

    class Data(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return dict(x=torch.tensor([i / 4., 1.]))

    class Scripted(BaseMetric):
        calls = 0

        def process(self, data_batch, data_samples):
            self.results.append(0)

        def compute_metrics(self, results):
            Scripted.calls += 1
            return dict(scores[Scripted.calls - 1])

    loader = dict(dataset=Data(), batch_size=2, num_workers=0,
                  sampler=dict(type='InfiniteSampler', shuffle=False))
    val_loader = dict(loader, sampler=dict(type='DefaultSampler',
                                           shuffle=False))
    return IFormerRunner(
        model=Model(), work_dir=str(work_dir), train_dataloader=loader,
        val_dataloader=val_loader, val_evaluator=[Scripted()],
        val_cfg=dict(),
        train_cfg=dict(type='ResumableIterBasedTrainLoop', max_iters=iters,
                       val_interval=every),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        param_scheduler=dict(type='MultiStepLR', milestones=[4],
                             by_epoch=False),
        default_hooks=dict(checkpoint=dict(
            type='SafeCheckpointHook', interval=every, by_epoch=False,
            **checkpoint)),
        randomness=dict(seed=0), default_scope='mmengine',
        # mmengine names runners by the second they start in and shares a
        # MessageHub (with keep_ckpt_ids) between runners of the same name
        experiment_name=f'scripted_{uuid.uuid4().hex}')
