#!/usr/bin/env python
"""Mutation testing of the modules where a silent bug costs users most.

    python benchmarks/mutation.py                 # every group, 25 mutants each
    python benchmarks/mutation.py --sample 0      # every mutant (hours)
    python benchmarks/mutation.py --groups backbone checkpoint --sample 40
    python benchmarks/mutation.py --list          # the groups and their tests

It uses cosmic-ray (a maintained mutation tester), installed into its own
virtual environment under the work dir so that the project's environment
is never touched; the tests run with the interpreter that runs this script.
The mutants are applied to a fresh ``git clone`` of this repository's HEAD
(commit first: uncommitted changes are not tested), never to your checkout.

For each group: ``cosmic-ray init`` lists every mutant of the group's
modules; a random sample (``--sample``, ``--seed``; reported) is kept and
the rest marked skipped; the unmutated tests must pass (baseline); then
each mutant runs the group's test files with ``pytest -x``. A mutant is
killed when the tests fail or time out. Known equivalent mutants (they
cannot change behaviour) are listed in ``benchmarks/mutation_equivalents.txt``
with the reason, excluded from the score and printed.

Prints the score per group and per module (killed / (killed +
survived)) and every survivor with its diff; writes
``<work-dir>/report.json`` and ``<work-dir>/report.md``. Not part of CI: it
takes long on 2 cores.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
COSMIC_RAY = 'cosmic-ray==8.7.0'
STAMP = '.iformer_mm_mutation_workdir'
EQUIVALENTS = osp.join(REPO, 'benchmarks', 'mutation_equivalents.txt')

# group -> (modules to mutate, test files (globs) that guard them)
GROUPS = {
    'backbone': (['iformer_mm/models/backbones/iformer.py'],
                 ['tests/test_backbone_units.py', 'tests/test_backbone.py',
                  'tests/test_windows*.py',
                  'tests/test_fused_attn*.py',
                  'tests/test_padding_semantics.py']),
    'checkpoint': (['iformer_mm/models/checkpoint.py'],
                   ['tests/test_checkpoint.py', 'tests/test_loading*.py',
                    'tests/test_compat.py']),
    'compat': (['iformer_mm/compat/checkpoint.py',
                'iformer_mm/compat/coreml.py'],
               ['tests/test_compat.py']),
    # test_reliability.py as a whole takes 7 min (resume exactness, kill -9):
    # the groups that do not mutate the engine run only its tests of them
    'toy-data': (['iformer_mm/datasets/toy.py'],
                 ['tests/test_toy*.py',
                  'tests/test_reliability.py::test_toy_generator_leaves_'
                  'foreign_data_untouched',
                  'tests/test_reliability.py::test_toy_generator_replaces_'
                  'only_its_own_or_empty',
                  'tests/test_reliability.py::test_train_val_toy_cfg_'
                  'mismatch_is_a_config_error']),
    'census': (['iformer_mm/deploy/census.py',
                'iformer_mm/deploy/backbones.py'],
               ['tests/test_latency.py', 'tests/test_census*.py',
                'tests/test_published_latency.py']),
    'engine': (['iformer_mm/engine/checkpointing.py',
                'iformer_mm/engine/resume.py',
                'iformer_mm/engine/hooks.py',
                'iformer_mm/engine/loops.py',
                'iformer_mm/engine/lock.py'],
               # quick tests first: with pytest -x a mutant they catch is
               # done before the resume and kill -9 tests
               ['tests/test_engine.py', 'tests/test_loading*.py',
                'tests/test_reliability.py']),
    'runner': (['iformer_mm/engine/runner.py', 'iformer_mm/engine/cli.py',
                'iformer_mm/config.py'],
               ['tests/test_configs.py', 'tests/test_cli_upstream.py',
                'tests/test_cli_errors.py',
                'tests/test_engine.py::test_mmdets_own_train_script_runs_'
                'our_config_as_ours',
                'tests/test_reliability.py::test_train_tool_resume_errors_'
                'and_lock',
                'tests/test_reliability.py::test_train_val_toy_cfg_'
                'mismatch_is_a_config_error']),
    'predictor': (['iformer_mm/deploy/predictor*.py',
                   'iformer_mm/deploy/predictor/*.py'],
                  ['tests/test_predictor*.py']),
}


def log(msg: str) -> None:
    print(msg, flush=True)


def _expand(patterns, root):
    """Files matching the globs; a pytest node id (``file.py::test``) is
    kept as it is when its file exists."""
    out = []
    for pattern in patterns:
        if '::' in pattern:
            if osp.isfile(osp.join(root, pattern.split('::', 1)[0])):
                out.append(pattern)
            continue
        out += sorted(osp.relpath(p, root)
                      for p in glob.glob(osp.join(root, pattern)))
    return out


def ensure_workdir(path: str) -> None:
    """Create the work dir, or reuse one that this script created."""
    if osp.exists(path):
        if not osp.isfile(osp.join(path, STAMP)):
            raise SystemExit(
                f'error: {path} exists and was not created by this script; '
                f'choose another --work-dir (nothing was changed).')
        return
    os.makedirs(path)
    open(osp.join(path, STAMP), 'w').close()


def ensure_cosmic_ray(work_dir: str) -> str:
    venv = osp.join(work_dir, 'venv')
    exe = osp.join(venv, 'bin', 'cosmic-ray')
    if not osp.isfile(exe):
        log(f'installing {COSMIC_RAY} into {venv} (its own environment)')
        subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
        with open(osp.join(work_dir, 'pip-install.log'), 'w') as f:
            subprocess.run([osp.join(venv, 'bin', 'python'), '-m', 'pip',
                            'install', '-q', COSMIC_RAY], check=True,
                           stdout=f, stderr=subprocess.STDOUT)
    return venv


def fresh_clone(work_dir: str) -> str:
    tree = osp.join(work_dir, 'tree')
    if osp.exists(tree):
        shutil.rmtree(tree)  # inside our stamped work dir: ours
    subprocess.run(['git', 'clone', '--quiet', '--no-hardlinks', REPO, tree],
                   check=True)
    head = subprocess.run(['git', '-C', tree, 'rev-parse', '--short',
                           'HEAD'], check=True, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', REPO, 'status', '--porcelain',
                            '--untracked-files=no'], capture_output=True,
                           text=True).stdout.strip()
    if dirty:
        log('note: your checkout has uncommitted changes; they are NOT '
            'tested (the clone is of HEAD)')
    return head


def load_equivalents(path: str = EQUIVALENTS):
    """``module | operator | source line (stripped) | reason`` per line
    (the reason may not contain `` | ``; the source line may). The
    operator may end in ``@COLUMN`` (0-based, where the mutation starts):
    then only that mutant of the line is meant, not every one of its kind
    (a line with several numbers, say)."""
    entries = []
    if not osp.isfile(path):
        return entries
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith('#'):
                continue
            parts = [p.strip() for p in line.split(' | ')]
            if len(parts) < 4:
                raise SystemExit(f'error: {path}: expected "module | '
                                 f'operator | line | reason": {line!r}')
            # the source line may itself hold " | " (a bitwise or)
            operator, _, column = parts[1].partition('@')
            entries.append(dict(module=parts[0], operator=operator,
                                column=int(column) if column else None,
                                line=' | '.join(parts[2:-1]),
                                reason=parts[-1]))
    return entries


# Runs inside cosmic-ray's venv: list the work items with their source line.
_LIST = r'''
import json, sys
from cosmic_ray.work_db import use_db, WorkDB
out = []
with use_db(sys.argv[1], WorkDB.Mode.open) as db:
    for item in db.work_items:
        for m in item.mutations:
            out.append(dict(job_id=item.job_id, module=str(m.module_path),
                            operator=m.operator_name,
                            occurrence=m.occurrence,
                            start=list(m.start_pos), end=list(m.end_pos)))
print(json.dumps(out))
'''

_SKIP = r'''
import json, sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkResult, WorkerOutcome
skip = json.loads(open(sys.argv[2]).read())
with use_db(sys.argv[1], WorkDB.Mode.open) as db:
    db.set_multiple_results(skip, WorkResult(
        worker_outcome=WorkerOutcome.SKIPPED))
'''


def _venv_python(venv, code, *args, cwd=None):
    proc = subprocess.run([osp.join(venv, 'bin', 'python'), '-c', code,
                           *args], cwd=cwd, check=True, capture_output=True,
                          text=True)
    return proc.stdout


def _line_of(tree, module, lineno):
    with open(osp.join(tree, module)) as f:
        lines = f.read().splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ''


def _is_equivalent(item, text, equivalents):
    for eq in equivalents:
        if eq['module'] == item['module'] and \
                eq['operator'] == item['operator'] and eq['line'] == text \
                and eq.get('column') in (None, item['start'][1]):
            return eq['reason']
    return None


def group_timeout(requested, baseline_s):
    """Seconds a mutant's tests may run. A survivor runs every test, so a
    time-out near the baseline would count it as killed by the time-out
    alone: at least twice the baseline. Unasked, three times the baseline
    and at least a minute (a mutant that loops forever, e.g. a ``while``
    whose exit is mutated, then costs minutes, not the 10 it once did)."""
    if requested is None:
        return float(max(60, int(3 * baseline_s) + 1))
    return float(max(requested, int(2 * baseline_s) + 1))


def _write_config(path, modules, test_cmd, timeout):
    with open(path, 'w') as f:
        f.write('[cosmic-ray]\n')
        f.write(f'module-path = {json.dumps(modules)}\n')
        f.write(f'timeout = {float(timeout)}\n')
        f.write('excluded-modules = []\n')
        f.write(f'test-command = {json.dumps(test_cmd)}\n')
        f.write('[cosmic-ray.distributor]\nname = "local"\n')


def run_group(name, venv, work_dir, args, equivalents):
    tree = osp.join(work_dir, 'tree')
    modules = _expand(GROUPS[name][0], tree)
    tests = _expand(GROUPS[name][1], tree)
    if not modules or not tests:
        log(f'[{name}] skipped: modules {modules or "none"}, tests '
            f'{tests or "none"} in this checkout')
        return dict(group=name, skipped=True)
    gdir = osp.join(work_dir, name)
    os.makedirs(gdir, exist_ok=True)
    session = osp.join(gdir, 'session.sqlite')
    if osp.exists(session):
        os.remove(session)
    test_cmd = (f'{sys.executable} -m pytest -x -q -p no:cacheprovider '
                f'-o addopts="" ' + ' '.join(tests))
    cfg = osp.join(gdir, 'config.toml')
    # init ignores the time-out; the real one is known after the baseline
    _write_config(cfg, modules, test_cmd, timeout=600.0)
    cr = osp.join(venv, 'bin', 'cosmic-ray')
    subprocess.run([cr, 'init', cfg, session], cwd=tree, check=True)
    items = json.loads(_venv_python(venv, _LIST, session, cwd=tree))
    for item in items:
        item['line'] = item['start'][0]
        item['text'] = _line_of(tree, item['module'], item['line'])
        item['equivalent'] = _is_equivalent(item, item['text'], equivalents)
    candidates = [i for i in items if not i['equivalent']]
    rng = random.Random(f'{args.seed}:{name}')
    if args.sample and args.sample < len(candidates):
        chosen = rng.sample(candidates, args.sample)
    else:
        chosen = list(candidates)
    chosen_ids = {i['job_id'] for i in chosen}
    skip = [i['job_id'] for i in items if i['job_id'] not in chosen_ids]
    skip_file = osp.join(gdir, 'skip.json')
    with open(skip_file, 'w') as f:
        json.dump(skip, f)
    _venv_python(venv, _SKIP, session, skip_file, cwd=tree)
    log(f'[{name}] {len(items)} mutants in {", ".join(modules)}; '
        f'{len(items) - len(candidates)} known equivalent; testing '
        f'{len(chosen)} (seed {args.seed}) with {" ".join(tests)}')

    t0 = time.time()
    base = subprocess.run(test_cmd, shell=True, cwd=tree,
                          capture_output=True, text=True)
    if base.returncode != 0:
        log(f'[{name}] baseline FAILED: the unmutated tests do not pass; '
            f'no score. Last output:\n{base.stdout[-2000:]}')
        return dict(group=name, baseline_failed=True)
    base_s = time.time() - t0
    timeout = group_timeout(args.timeout, base_s)
    if args.timeout is not None and timeout > args.timeout:
        log(f'[{name}] --timeout {args.timeout:.0f} s is under twice the '
            f'baseline; raised to {timeout:.0f} s')
    _write_config(cfg, modules, test_cmd, timeout)
    log(f'[{name}] baseline passed in {base_s:.0f} s; running '
        f'mutants (each up to {timeout:.0f} s)')
    subprocess.run([cr, 'exec', cfg, session], cwd=tree, check=True)
    dump = subprocess.run([cr, 'dump', session], cwd=tree, check=True,
                          capture_output=True, text=True).stdout
    by_id = {i['job_id']: i for i in items}
    killed, survived, other = [], [], []
    for line in dump.splitlines():
        if not line.strip():
            continue
        work_item, result = json.loads(line)
        job = work_item['job_id']
        if job not in chosen_ids or result is None:
            continue
        info = dict(by_id[job])
        info['diff'] = result.get('diff') or ''
        outcome = result.get('test_outcome')
        worker = result.get('worker_outcome')
        if outcome == 'survived':
            survived.append(info)
        elif outcome in ('killed', 'incompetent'):
            killed.append(info)
        else:
            info['worker_outcome'] = worker
            other.append(info)
    done = len(killed) + len(survived)
    score = len(killed) / done if done else float('nan')
    log(f'[{name}] killed {len(killed)} / {done} = {100 * score:.1f}% '
        f'({len(other)} not run) in {time.time() - t0:.0f} s')
    per_module = {}
    for module in modules:
        k = sum(i['module'] == module for i in killed)
        s = sum(i['module'] == module for i in survived)
        per_module[module] = dict(killed=k, survived=s)
        if k + s:
            log(f'[{name}]   {module}: killed {k} / {k + s} = '
                f'{100 * k / (k + s):.0f}%')
    for s in survived:
        log(f'  SURVIVED {s["module"]}:{s["line"]} {s["operator"]}: '
            f'{s["text"]}')
    return dict(group=name, modules=modules, tests=tests,
                total=len(items), sampled=len(chosen),
                equivalent=[dict(module=i['module'], line=i['line'],
                                 operator=i['operator'], text=i['text'],
                                 reason=i['equivalent'])
                            for i in items if i['equivalent']],
                killed=len(killed), survived=survived, not_run=len(other),
                score=score, per_module=per_module)


def write_report(work_dir, results, head, args):
    stamp = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    report = dict(date=stamp, commit=head, sample=args.sample,
                  seed=args.seed, command=' '.join(sys.argv),
                  groups=results)
    with open(osp.join(work_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1, default=str)
    scored = [r for r in results if 'score' in r]
    killed = sum(r['killed'] for r in scored)
    done = killed + sum(len(r['survived']) for r in scored)
    lines = [f'Mutation score, {stamp}, commit {head}, '
             f'`{report["command"]}`', '',
             '| group | mutants | sampled | killed | survived | score |',
             '|---|---|---|---|---|---|']
    for r in scored:
        lines.append(f'| {r["group"]} | {r["total"]} | {r["sampled"]} | '
                     f'{r["killed"]} | {len(r["survived"])} | '
                     f'{100 * r["score"]:.0f}% |')
        for module, c in r.get('per_module', {}).items():
            n = c['killed'] + c['survived']
            if n:
                lines.append(f'| &nbsp; {module} | | | {c["killed"]} | '
                             f'{c["survived"]} | '
                             f'{100 * c["killed"] / n:.0f}% |')
    if done:
        lines.append(f'| all | | | {killed} | {done - killed} | '
                     f'{100 * killed / done:.0f}% |')
    with open(osp.join(work_dir, 'report.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    log('\n'.join(lines))
    return killed / done if done else float('nan')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--groups', nargs='+', choices=sorted(GROUPS),
                        default=sorted(GROUPS))
    parser.add_argument('--sample', type=int, default=25,
                        help='mutants per group, drawn at random; 0 = all')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--timeout', type=float, default=None,
                        help='seconds per mutant test run (a time-out '
                        'counts as killed); default: 3x the group\'s '
                        'baseline, at least 60; never under 2x')
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs',
                                                       'mutation'))
    parser.add_argument('--list', action='store_true',
                        help='print the groups, their modules and tests')
    args = parser.parse_args(argv)
    if args.sample < 0:
        parser.error('--sample must be >= 0')
    if args.list:
        for name in args.groups:
            mods, tests = GROUPS[name]
            print(f'{name}: {" ".join(_expand(mods, REPO))} <- '
                  f'{" ".join(_expand(tests, REPO))}')
        return 0
    ensure_workdir(args.work_dir)
    venv = ensure_cosmic_ray(args.work_dir)
    head = fresh_clone(args.work_dir)
    # the list of the commit under test, not of the working copy
    equivalents = load_equivalents(osp.join(
        args.work_dir, 'tree', 'benchmarks', 'mutation_equivalents.txt'))
    results = [run_group(name, venv, args.work_dir, args, equivalents)
               for name in args.groups]
    write_report(args.work_dir, results, head, args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
