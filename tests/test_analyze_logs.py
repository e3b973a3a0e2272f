"""tools/analyze_logs.py: curves and training time from mmengine JSON logs.

The logs are written by a real mmengine Runner (a two-parameter model whose
losses and metric are known), and by hand where exact times are needed.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'tools'))
import analyze_logs  # noqa: E402


def write_log(path, records):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as fh:
        for r in records:
            fh.write(json.dumps(r) + '\n')
    return str(path)


# two epochs of three logged iterations; the first record of each epoch is
# the slow one (data-loader start-up)
TIMES = {1: [5.0, 1.0, 1.0], 2: [5.0, 2.0, 2.0]}


def epoch_log(tmp_path, name='run'):
    recs, step = [], 0
    for epoch, times in TIMES.items():
        for t in times:
            step += 1
            recs.append({'lr': 0.01, 'data_time': 0.1, 'loss': 10.0 / step,
                         'loss_cls': 5.0 / step, 'time': t, 'epoch': epoch,
                         'iter': step, 'memory': 10, 'step': step})
        recs.append({'coco/bbox_mAP': 0.1 * epoch, 'coco/segm_mAP':
                     0.05 * epoch, 'data_time': 0.1, 'time': 0.2,
                     'step': epoch})
    return write_log(tmp_path / name / '20260101_000000' / 'vis_data' /
                     'scalars.json', recs)


def test_cal_train_time_numbers(tmp_path):
    log = analyze_logs.RunLog(epoch_log(tmp_path))
    res = analyze_logs.train_time(log)
    assert res['average'] == pytest.approx(np.mean([1, 1, 2, 2]))
    assert res['slowest'] == (2, pytest.approx(2.0))
    assert res['fastest'] == (1, pytest.approx(1.0))
    assert res['std_over_epochs'] == pytest.approx(0.5)
    res = analyze_logs.train_time(log, include_outliers=True)
    assert res['average'] == pytest.approx(np.mean(TIMES[1] + TIMES[2]))


def test_plot_curve_plots_the_logged_values(tmp_path):
    a = analyze_logs.RunLog(epoch_log(tmp_path, 'a'))
    b = analyze_logs.RunLog(epoch_log(tmp_path, 'b'))
    out = tmp_path / 'curves.png'
    fig = analyze_logs.plot_curve([a, b], ['loss', 'bbox_mAP'],
                                  legend=['A', 'B'], out=str(out))
    assert out.stat().st_size > 5000
    loss_ax, map_ax = fig.axes
    xy = loss_ax.lines[0].get_xydata()
    assert xy[:, 0].tolist() == [1, 2, 3, 4, 5, 6]
    assert np.allclose(xy[:, 1], [10.0 / s for s in range(1, 7)])
    assert map_ax.get_title() == 'coco/bbox_mAP'
    assert map_ax.get_xlabel() == 'epoch' and loss_ax.get_xlabel() == \
        'iteration'
    assert np.allclose(map_ax.lines[1].get_xydata(), [[1, 0.1], [2, 0.2]])
    assert [t.get_text() for t in map_ax.get_legend().get_texts()] == \
        ['A', 'B']


def test_work_dir_finds_the_latest_run(tmp_path):
    epoch_log(tmp_path, 'w')
    newer = write_log(tmp_path / 'w' / '20260102_000000' / 'vis_data' /
                      'scalars.json',
                      [{'lr': 1, 'loss': 1.0, 'time': 1, 'iter': 1,
                        'step': 1}])
    assert analyze_logs.RunLog(str(tmp_path / 'w')).path == newer


def test_work_dir_skips_a_later_test_run(tmp_path):
    """tools/test.py writes its own timestamped run into the work_dir: the
    curves are still the training run's."""
    trained = epoch_log(tmp_path, 'w')
    write_log(tmp_path / 'w' / '20990101_000000' / 'vis_data' /
              'scalars.json', [{'coco/bbox_mAP': 0.2, 'step': 6}])
    assert analyze_logs.RunLog(str(tmp_path / 'w')).path == trained


def run_tool(args, cwd):
    return subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'analyze_logs.py'), *args],
        cwd=str(cwd), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args,needle', [
    (['plot_curve', 'LOG', '--keys', 'mIoU'],
     "'mIoU' is not in"),
    (['plot_curve', 'LOG', '--keys', 'mAP'], "'mAP' is not in"),
    (['plot_curve', 'NOPE', '--keys', 'loss'], 'no such file or folder'),
    (['plot_curve', 'LOG', 'LOG', '--legend', 'one'],
     '--legend has 1 names for 2 logs'),
    (['cal_train_time', 'EMPTY'], 'no training or validation records'),
])
def test_bad_input_one_line_exit_2(tmp_path, args, needle):
    log = epoch_log(tmp_path)
    empty = tmp_path / 'empty.json'
    empty.write_text('\n')
    args = [{'LOG': log, 'NOPE': str(tmp_path / 'nope'),
             'EMPTY': str(empty)}.get(a, a) for a in args]
    proc = run_tool(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    if 'is not in' in needle:  # tells the user what there is
        assert 'coco/bbox_mAP' in lines[0] and 'loss_cls' in lines[0]


def test_real_mmengine_run(tmp_path):
    """A Runner's own log: the tool finds it from the work_dir, plots the
    loss it logged and the metric, and times it (CLI)."""
    import torch
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Quadratic(BaseModel):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([3.0]))

        def forward(self, inputs, data_samples=None, mode='tensor'):
            x = torch.stack(inputs) if isinstance(inputs, list) else inputs
            if mode == 'loss':
                return {'loss': (self.w ** 2).sum() + 0 * x.sum()}
            return [self.w.detach().clone() for _ in range(len(x))]

    class WMetric(BaseMetric):
        default_prefix = 'toy'

        def process(self, data_batch, data_samples):
            self.results += [float(s) for s in data_samples]

        def compute_metrics(self, results):
            return {'w': float(np.mean(results))}

    data = [dict(inputs=torch.zeros(1)) for _ in range(8)]
    loader = dict(dataset=data, sampler=dict(type='DefaultSampler',
                                             shuffle=False),
                  batch_size=2, collate_fn=dict(type='default_collate'))
    work_dir = tmp_path / 'work'
    runner = Runner(
        model=Quadratic(), work_dir=str(work_dir), train_dataloader=loader,
        val_dataloader=loader, val_evaluator=[WMetric()],
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=True, max_epochs=3, val_interval=1),
        val_cfg=dict(), default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=100)),
        log_processor=dict(window_size=1),  # log the raw loss
        default_scope='mmengine')
    runner.train()

    log = analyze_logs.RunLog(str(work_dir))
    x, y, xlabel, full = log.series('loss')
    assert xlabel == 'iteration' and x.tolist() == list(range(1, 13))
    # SGD on w^2: w <- w (1 - 2 lr) = 0.8 w, loss = w^2
    assert np.allclose(y, [9 * 0.64 ** k for k in range(12)], rtol=1e-4)
    x, y, xlabel, full = log.series('w')
    assert full == 'toy/w' and xlabel == 'epoch' and x.tolist() == [1, 2, 3]
    assert np.allclose(y, [3 * 0.8 ** (4 * e) for e in (1, 2, 3)], rtol=1e-4)

    out = tmp_path / 'curve.png'
    proc = run_tool(['plot_curve', str(work_dir), '--keys', 'loss', 'w',
                     '--out', str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 5000
    proc = run_tool(['cal_train_time', str(work_dir)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'slowest epoch' in proc.stdout and 'average iter time' in \
        proc.stdout


# --------------------------------------------------------------------------
# tools/plot_latency_accuracy.py
# --------------------------------------------------------------------------
def test_latency_accuracy_plot_places_measured_points(tmp_path):
    import plot_latency_accuracy as pla

    def row(key, ms, status='ok'):
        return {'key': key, 'status': status,
                'onnx': {'timing': {'median_ms': ms}},
                'torch': {'timing': {'median_ms': ms * 3}}}
    run = {'coreml_runtime': False, 'config': {'resolution': [512, 512]},
           'environment': {'cpu': 'Test CPU', 'threads': 2},
           'results': [row('iformer-m:cc-hybrid', 40.0),
                       row('iformer-m:global', 99.0),  # not Table 5's layout
                       row('resnet18', 30.0),
                       row('swin-t', 0, status='failed')]}
    fig, points = pla.plot(run, str(tmp_path / 'p.png'))
    assert points == [('iFormer-M', 40.0), ('ResNet-18', 30.0)]
    paper_ax, here_ax = fig.axes[:2]
    # right panel: (measured ms, the paper's box AP from Table 5)
    here = sorted(tuple(c.get_offsets()[0]) for c in here_ax.collections)
    assert here == [(30.0, 34.0), (40.0, 40.8)]
    # left panel: Table 5's latencies; Swin-T ("Failed") has none
    paper = {tuple(c.get_offsets()[0]) for c in paper_ax.collections}
    assert (4.00, 40.8) in paper and (6.60, 42.2) in paper
    assert len(paper) == len(pla.TABLE5) - 1
    fig, points = pla.plot(run, str(tmp_path / 'q.png'), metric='miou',
                           source='torch')
    here = sorted(tuple(c.get_offsets()[0]) for c in fig.axes[1].collections)
    assert here == [(90.0, 32.9), (120.0, 42.4)]


@pytest.mark.slow
def test_latency_accuracy_plot_bad_input(tmp_path):
    bad = tmp_path / 'bad.json'
    bad.write_text('{"results": []}')
    for args, needle in [([str(tmp_path / 'none.json')], 'no such file'),
                         ([str(bad)], 'no timed backbone of Table 5')]:
        proc = subprocess.run(
            [sys.executable, osp.join(REPO, 'tools',
                                      'plot_latency_accuracy.py'), *args,
             '--out', str(tmp_path / 'x.png')],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_readme_curve_image_is_regenerated_by_the_tool(tmp_path):
    """docs/toy_seg_curves.png comes from the committed log through the
    command docs/benchmarks.md describes; rerunning it gives the same
    picture."""
    from matplotlib.testing.compare import compare_images
    out = tmp_path / 'toy_seg_curves.png'
    proc = run_tool([
        'plot_curve', osp.join(REPO, 'docs', 'logs', 'toy_seg_scalars.json'),
        '--keys', 'loss', 'mIoU', 'aAcc', '--legend',
        'iFormer-T Semantic FPN, toy ADE', '--title',
        'configs/toy/fpn_iformer_t_toy.py (val every 30 iters)', '--out',
        str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    diff = compare_images(osp.join(REPO, 'docs', 'toy_seg_curves.png'),
                          str(out), tol=2)
    assert diff is None, diff
