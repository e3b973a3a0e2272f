#!/usr/bin/env python
"""Plot training curves and compute training time from mmengine JSON logs.

As mmdet's ``tools/analysis_tools/analyze_logs.py``, for the logs every
OpenMMLab 2.0 run writes (``<work_dir>/<timestamp>/vis_data/scalars.json``
or ``<timestamp>.json``; a work_dir or run folder picks its latest log)::

    python tools/analyze_logs.py plot_curve LOG [LOG ...] --keys loss \\
        [--legend A B] [--title T] [--out curves.png]
    python tools/analyze_logs.py plot_curve LOG --keys loss bbox_mAP mIoU
    python tools/analyze_logs.py cal_train_time LOG [LOG ...]

Training scalars (``loss``, ``loss_cls``, ``lr``, ...) are plotted against
the iteration, evaluation metrics (``coco/bbox_mAP``, ``mIoU``,
``accuracy/top1``, ...) against the epoch (epoch-based runs) or iteration;
a key may be given without its ``prefix/`` (``bbox_mAP``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np


class LogError(Exception):
    """A log the user pointed at cannot be used (exit 2, one line)."""


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------
def find_log(path: str) -> str:
    """The JSON log for ``path``: a file, or the latest run's
    ``vis_data/scalars.json`` (or ``<timestamp>.json``) under a folder."""
    if osp.isfile(path):
        return path
    if not osp.isdir(path):
        raise LogError(f'{path}: no such file or folder (give a work_dir or '
                       'its <timestamp>/vis_data/scalars.json)')
    found = []
    for pattern in ('vis_data/scalars.json', '*/vis_data/scalars.json',
                    'vis_data/*.json', '*/vis_data/*.json'):
        found = sorted(glob.glob(osp.join(path, pattern)))
        if found:
            break
    if not found:
        raise LogError(f'{path}: no vis_data/*.json log below it (was the '
                       'run started with tools/train.py?)')
    # Run folders are timestamps: the last is the latest. tools/test.py
    # writes its own run into the same work_dir, with no training records:
    # take the latest run that trained, if there is one.
    for log in reversed(found):
        if _has_training_records(log):
            return log
    return found[-1]


def _has_training_records(path: str) -> bool:
    try:
        with open(path) as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and 'lr' in record:
                    return True
    except OSError:
        pass
    return False


class RunLog:
    """One run's scalars: ``train`` and ``val`` records, in order."""

    def __init__(self, path: str):
        self.path = find_log(path)
        self.train: List[dict] = []
        self.val: List[dict] = []
        with open(self.path) as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LogError(f'{self.path}:{n}: not a JSON log line '
                                   f'({e.msg})') from None
                if 'step' not in rec:
                    continue
                # training lines carry lr (LoggerHook); validation lines
                # carry the metrics
                (self.train if 'lr' in rec or 'loss' in rec
                 else self.val).append(rec)
        if not self.train and not self.val:
            raise LogError(f'{self.path}: no training or validation records')
        self.by_epoch = any('epoch' in r for r in self.train)

    def keys(self) -> Dict[str, List[str]]:
        drop = {'step', 'epoch', 'iter'}
        out = {}
        for name, recs in (('train', self.train), ('val', self.val)):
            seen = []
            for r in recs:
                seen += [k for k in r if k not in drop and k not in seen]
            out[name] = seen
        return out

    def resolve(self, key: str) -> tuple:
        """``(phase, full key)`` for ``key`` (suffix match after '/')."""
        keys = self.keys()
        for phase in ('train', 'val'):
            if key in keys[phase]:
                return phase, key
        for phase in ('val', 'train'):
            hits = [k for k in keys[phase] if k.split('/')[-1] == key]
            if len(hits) == 1:
                return phase, hits[0]
            if len(hits) > 1:
                raise LogError(f'{key!r} is ambiguous in {self.path}: '
                               f'{", ".join(hits)}')
        raise LogError(
            f'{key!r} is not in {self.path}; it has training keys '
            f'{", ".join(keys["train"]) or "-"} and evaluation keys '
            f'{", ".join(keys["val"]) or "-"}')

    def series(self, key: str, start_epoch: int = 1):
        """``(x, y, x label, full key)`` of ``key``, from ``start_epoch``
        on (epoch-based runs)."""
        phase, full = self.resolve(key)
        recs = [r for r in getattr(self, phase) if full in r]
        if self.by_epoch:
            recs = [r for r in recs if (r.get('epoch', 0) if phase == 'train'
                                        else r['step']) >= start_epoch]
        x = np.array([r['step'] for r in recs], dtype=float)
        y = np.array([r[full] for r in recs], dtype=float)
        if phase == 'val':
            label = 'epoch' if self.by_epoch else 'iteration'
        else:
            label = 'iteration'
        return x, y, label, full


# --------------------------------------------------------------------------
# plot_curve
# --------------------------------------------------------------------------
def plot_curve(logs: Sequence[RunLog], keys: Sequence[str],
               legend: Optional[Sequence[str]] = None,
               title: Optional[str] = None, out: Optional[str] = None,
               style: str = 'default', backend: Optional[str] = None,
               dpi: int = 100, start_epoch: int = 1):
    """One panel per key, one line per log; saved to ``out`` (or shown).

    Returns the matplotlib figure.
    """
    import matplotlib
    if backend:
        matplotlib.use(backend)
    elif out:
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    if legend is not None and len(legend) != len(logs):
        raise LogError(f'--legend has {len(legend)} names for {len(logs)} '
                       'logs')
    names = list(legend) if legend else [
        osp.basename(osp.dirname(osp.dirname(log.path))) or log.path
        for log in logs]
    for log in logs:
        print(f'plotting {log.path}')
    with plt.style.context(style):
        fig, axes = plt.subplots(1, len(keys), squeeze=False,
                                 figsize=(4.8 * len(keys), 3.6))
        for ax, key in zip(axes[0], keys):
            full = key
            for log, name in zip(logs, names):
                x, y, xlabel, full = log.series(key, start_epoch)
                ax.plot(x, y, marker='o' if len(x) < 30 else None,
                        markersize=3, label=name, linewidth=1.2)
                ax.set_xlabel(xlabel)
            ax.set_title(full)
            ax.grid(alpha=0.3)
            if len(logs) > 1 or legend:
                ax.legend(fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        if out:
            os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
            fig.savefig(out, dpi=dpi)
            print(f'saved {out}')
        else:
            plt.show()
    return fig


# --------------------------------------------------------------------------
# cal_train_time
# --------------------------------------------------------------------------
def train_time(log: RunLog, include_outliers: bool = False) -> dict:
    """Per-iteration time statistics of a run's training records.

    The first logged record of each epoch (or of the run, for iteration
    based runs) includes data-loader start-up; it is left out unless
    ``include_outliers``.
    """
    recs = [r for r in log.train if 'time' in r]
    if not recs:
        raise LogError(f'{log.path}: no training records with "time"')
    groups: Dict[int, List[float]] = {}
    for r in recs:
        groups.setdefault(int(r.get('epoch', 0)), []).append(float(r['time']))
    if not include_outliers:
        groups = {e: t[1:] if len(t) > 1 else t for e, t in groups.items()}
    per_epoch = {e: float(np.mean(t)) for e, t in groups.items()}
    all_t = [t for ts in groups.values() for t in ts]
    out = {'log': log.path, 'average': float(np.mean(all_t)),
           'records': len(all_t)}
    if log.by_epoch:
        slow = max(per_epoch, key=per_epoch.get)
        fast = min(per_epoch, key=per_epoch.get)
        out.update(slowest=(slow, per_epoch[slow]),
                   fastest=(fast, per_epoch[fast]),
                   std_over_epochs=float(np.std(list(per_epoch.values()))))
    return out


def cal_train_time(logs: Sequence[RunLog], include_outliers=False) -> list:
    results = []
    for log in logs:
        res = train_time(log, include_outliers)
        print(f'-----Analyze train time of {log.path}-----')
        if 'slowest' in res:
            print(f'slowest epoch {res["slowest"][0]}, average time is '
                  f'{res["slowest"][1]:.4f} s/iter')
            print(f'fastest epoch {res["fastest"][0]}, average time is '
                  f'{res["fastest"][1]:.4f} s/iter')
            print(f'time std over epochs is {res["std_over_epochs"]:.4f}')
        print(f'average iter time: {res["average"]:.4f} s/iter')
        print()
        results.append(res)
    return results


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Analyze mmengine JSON logs (as mmdet\'s analyze_logs)')
    sub = parser.add_subparsers(dest='task', required=True)
    p = sub.add_parser('plot_curve', help='plot scalars from the logs')
    p.add_argument('json_logs', nargs='+',
                   help='JSON logs (vis_data/scalars.json) or work_dirs')
    p.add_argument('--keys', nargs='+', default=['loss'],
                   help='scalars to plot, e.g. loss bbox_mAP mIoU')
    p.add_argument('--start-epoch', type=int, default=1,
                   help='plot from this epoch on (epoch-based runs)')
    p.add_argument('--title', help='title of the figure')
    p.add_argument('--legend', nargs='+', default=None,
                   help='one name per log')
    p.add_argument('--backend', default=None, help='matplotlib backend')
    p.add_argument('--style', default='default', help='matplotlib style')
    p.add_argument('--out', default=None, help='save the figure here')
    p.add_argument('--dpi', type=int, default=100)
    t = sub.add_parser('cal_train_time', help='compute the time per iter')
    t.add_argument('json_logs', nargs='+')
    t.add_argument('--include-outliers', action='store_true',
                   help='include the first record of every epoch')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        logs = [RunLog(p) for p in args.json_logs]
        if args.task == 'plot_curve':
            plot_curve(logs, args.keys, legend=args.legend, title=args.title,
                       out=args.out, style=args.style, backend=args.backend,
                       dpi=args.dpi, start_epoch=args.start_epoch)
        else:
            cal_train_time(logs, args.include_outliers)
    except LogError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
