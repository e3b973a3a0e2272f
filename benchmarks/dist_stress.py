"""Repeat the 2-process gloo toy training under CPU load; count clean ends.

A 2-process run through ``tools/dist_train.sh`` once finished training and
evaluation and then lost rank 1 to "terminate called without an active
exception" (SIGABRT, exit -6) while the interpreter shut down with the gloo
process group alive. The tools now end the group (barrier,
``destroy_process_group``) before they exit. This script is the proof: it
repeats the run ``--runs`` times while ``--load`` busy processes compete for
the CPUs, and reports each run's exit code, its duration and whether any
rank aborted. Not part of the test suite (minutes per run on 2 cores).

Examples::

    python benchmarks/dist_stress.py --runs 8               # this checkout
    python benchmarks/dist_stress.py --runs 8 --repo ../iformer-mm   # another

Exit code 0 only if every run ended cleanly (exit 0, no abort message).
"""
import argparse
import multiprocessing as mp
import os
import os.path as osp
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = osp.dirname(osp.dirname(osp.abspath(__file__)))
SMALL = [
    'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
    'train_dataloader.dataset.indices=4', 'val_dataloader.dataset.indices=2',
    'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=1',
]
ABORT = re.compile(r'terminate called|SIGABRT|exitcode\s*:\s*-6|Signals\.'
                   r'SIGABRT|core dumped')


def _burn(stop):
    x = 0
    while not stop.is_set():
        for i in range(100000):
            x += i * i
    return x


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_once(repo, config, workspace, index, timeout):
    env = dict(os.environ)
    env.update(PORT=str(_free_port()), MASTER_ADDR='127.0.0.1',
               PYTHON=sys.executable, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([repo, env.get('PYTHONPATH', '')]))
    cmd = ['bash', osp.join(repo, 'tools', 'dist_train.sh'), config, '2',
           '--work-dir', f'run_{index}', '--cfg-options', *SMALL]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workspace, env=env,
                              capture_output=True, text=True,
                              timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = 'timeout'
        out = (e.stdout or b'').decode(errors='replace') + \
            (e.stderr or b'').decode(errors='replace')
    seconds = time.perf_counter() - start
    aborted = bool(ABORT.search(out))
    trained = 'coco/segm_mAP:' in out or 'accuracy/top1' in out or \
        'mIoU' in out
    return dict(run=index, rc=rc, seconds=seconds, aborted=aborted,
                evaluated=trained, tail=out[-3000:])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.
                                RawDescriptionHelpFormatter)
    p.add_argument('--runs', type=int, default=8)
    p.add_argument('--load', type=int, default=os.cpu_count() or 2,
                   help='busy-loop processes during the runs (default: one '
                   'per CPU)')
    p.add_argument('--repo', default=HERE,
                   help='checkout whose tools/dist_train.sh runs')
    p.add_argument('--config', default=None, help='default: the toy Mask '
                   'R-CNN config of --repo')
    p.add_argument('--timeout', type=int, default=900,
                   help='seconds per run')
    p.add_argument('--keep', action='store_true',
                   help='keep the workspace (logs, checkpoints)')
    args = p.parse_args()
    repo = osp.abspath(args.repo)
    config = args.config or osp.join(repo, 'configs', 'toy',
                                     'maskrcnn_iformer_t_toy.py')
    workspace = tempfile.mkdtemp(prefix='dist_stress_')
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop, ), daemon=True)
               for _ in range(args.load)]
    for b in burners:
        b.start()
    print(f'{args.runs} x 2-process gloo training of {osp.basename(config)} '
          f'from {repo}, {args.load} busy processes, {os.cpu_count()} CPUs '
          f'({platform.processor() or platform.machine()}), load average '
          f'{os.getloadavg()[0]:.1f}; workspace {workspace}', flush=True)
    results = []
    try:
        for i in range(args.runs):
            r = run_once(repo, config, workspace, i, args.timeout)
            results.append(r)
            state = 'clean' if r['rc'] == 0 and not r['aborted'] else \
                'FAILED'
            print(f'run {i}: exit {r["rc"]}, {r["seconds"]:.0f} s, '
                  f'load {os.getloadavg()[0]:.1f}, '
                  f'evaluated={r["evaluated"]}, abort message='
                  f'{r["aborted"]}: {state}', flush=True)
            if state == 'FAILED':
                print('  ' + r['tail'].replace('\n', '\n  '), flush=True)
    finally:
        stop.set()
        for b in burners:
            b.join(timeout=5)
            if b.is_alive():
                b.terminate()
        if not args.keep:
            shutil.rmtree(workspace, ignore_errors=True)
    clean = sum(r['rc'] == 0 and not r['aborted'] for r in results)
    print(f'{clean}/{len(results)} runs ended cleanly (exit 0 on every rank, '
          f'no abort)')
    return 0 if clean == len(results) else 1


if __name__ == '__main__':
    sys.exit(main())
