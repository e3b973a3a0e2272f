"""Fit and validate the iPhone 13 Core ML latency predictor.

    python benchmarks/latency_predictor.py            # fit + validate (+ CPU proxies, plot)
    python benchmarks/latency_predictor.py extract    # reconvert networks, refresh features
    python benchmarks/latency_predictor.py fit --measurements my.csv --device "iPhone 15 Pro"

Validation cannot leak: the model (term set, coefficients, "Failed" rule)
is chosen and fitted on Table 18 + Table 17 rows only; Table 5's 512x512
rows (without iFormer-M, which repeats Table 17) are the held-out test.
The CPU proxies of the latency tool (PyTorch eager, ONNX Runtime; 2
threads) are timed in the same run on the same held-out networks, each
with one scale factor fitted on those rows (which flatters them).
Progress goes to stderr; the result table to stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from iformer_mm.deploy.predictor import model as M  # noqa: E402
from iformer_mm.deploy.predictor.data import (  # noqa: E402
    DEFAULT_DEVICE, MEASUREMENTS_PATH, load_measurements)
from iformer_mm.deploy.predictor.extract import (  # noqa: E402
    FEATURES_PATH, row_id)

PLOT_PATH = os.path.join(ROOT, 'docs', 'latency_predictor.png')
TARGETS = dict(median_abs_pct=8.0, max_abs_pct=35.0, spearman=0.9,
               lofo_median_abs_pct=15.0)


def log(msg: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def usage_error(msg: str) -> None:
    print(f'latency_predictor: error: {msg}', file=sys.stderr)
    sys.exit(2)


def joined(rows: List[Dict[str, Any]], features_path: str
           ) -> Tuple[List[Tuple[Dict[str, Any], Dict[str, Any]]],
                      List[Tuple[Dict[str, Any], str]]]:
    """(row, features) for rows with a usable reference network, and
    (row, reason) for the excluded ones."""
    with open(features_path) as f:
        cached = json.load(f)['rows']
    usable, excluded = [], []
    for r in rows:
        entry = cached.get(row_id(r['key'], r['resolution']))
        if entry is None:
            excluded.append((r, 'no features extracted yet (run extract)'))
        elif entry['status'] != 'ok':
            excluded.append((r, entry['reason']))
        else:
            r = dict(r, reference=entry['reference'])
            usable.append((r, entry['features']))
    return usable, excluded


def fmt(x: Optional[float], spec: str = '.2f') -> str:
    if x is None:
        return 'Failed'
    return ('Failed/' if getattr(x, 'failed', False) else '') + \
        format(float(x), spec)


def _jp(p) -> Any:
    """JSON form of a prediction."""
    return dict(ms=float(p), failed=bool(getattr(p, 'failed', False)))


def fit_rows(usable, device):
    return [(r, f) for r, f in usable if r['role'] in M.FIT_ROLES
            and r.get('device', DEFAULT_DEVICE) == device]


def cmd_fit(args) -> Dict[str, Any]:
    rows = load_measurements(args.measurements)
    usable, excluded = joined(rows, args.features)
    train = fit_rows(usable, args.device)
    if not train:
        usage_error(f'no usable fit rows for device {args.device!r} in '
                    f'{args.measurements}; check the device column and run '
                    'extract first.')
    tr_rows, tr_feats = [r for r, _ in train], [f for _, f in train]
    log(f'fit set: {len(train)} rows of {args.device} '
        f'({sum(r["failed"] for r in tr_rows)} Failed); choosing terms by '
        'leave-one-family-out ...')
    best, scores = M.select_terms(tr_rows, tr_feats, device=args.device)
    for name, s in scores.items():
        log(f'  {name:24s} LOFO median {s["median_abs_pct"]:.1f}%  max '
            f'{s["max_abs_pct"]:.0f}%  Spearman {s["spearman"]:.2f}')
    params = M.fit(tr_rows, tr_feats, M.TERM_SETS[best], device=args.device)
    params['term_set'] = best
    lofo = M.leave_one_family_out(tr_rows, tr_feats, M.TERM_SETS[best],
                                  args.device)
    lofo_err = M.errors(lofo)
    M.accept_failed_rule(params, lofo_err)
    if params.get('failed_rule_rejected'):
        log(f'Failed rule dropped: {params["failed_rule_rejected"]}')
        lofo = [(r, M.Prediction(float(p))) for r, p in lofo]
    params['validation'] = dict(
        lofo=lofo_err, term_set_scores=scores,
        lofo_rows={f'{r["network"]}@{r["resolution"]}': _jp(p)
                   for r, p in lofo})
    return dict(rows=rows, usable=usable, excluded=excluded, train=train,
                params=params, lofo=lofo)


# ----------------------------------------------------------------- proxies
#: The CPU proxies: (label, field of measure_proxies' entries).
PROXIES = (('PyTorch eager CPU', 'torch_ms'), ('ONNX Runtime CPU', 'ort_ms'),
           ('ExecuTorch XNNPACK CPU', 'et_ms'))


def _executorch():
    """The ExecuTorch export and timing functions, or None (with a line)
    when the ``executorch`` extra is not installed."""
    try:
        from iformer_mm.deploy import executorch as et
        et.import_executorch()
    except ImportError as exc:
        log(f'ExecuTorch proxy skipped: {exc}')
        return None
    return et


def measure_proxies(networks: List[Dict[str, Any]], threads: int,
                    runs: int) -> Dict[str, Dict[str, float]]:
    """Median ms of PyTorch eager, ONNX Runtime and ExecuTorch (XNNPACK)
    on the CPU per network, each on the same reference classifier."""
    import torch
    from iformer_mm.deploy.export import TupleOutputs, export_onnx
    from iformer_mm.deploy.latency import time_onnxruntime, time_torch
    from iformer_mm.deploy.predictor.references import build_reference
    torch.set_num_threads(threads)
    et = _executorch()
    out: Dict[str, Dict[str, float]] = {}
    for i, r in enumerate(networks, 1):
        res = r['resolution']
        model, _ = build_reference(r['key'], res)
        wrapped = TupleOutputs(model).eval()
        x = torch.randn(1, 3, res, res)
        t = time_torch(wrapped, x, warmup=1, runs=runs)['median_ms']
        entry = dict(torch_ms=t)
        with torch.no_grad():
            ref = [o.numpy() for o in wrapped(x)]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = os.path.join(tmp, 'm.onnx')
                export_onnx(wrapped, x, path,
                            [f'out{j}' for j in range(len(ref))])
                entry['ort_ms'] = time_onnxruntime(
                    path, x.numpy(), threads, warmup=1, runs=runs,
                    reference=ref)['median_ms']
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                log(f'  ONNX Runtime failed for {r["network"]}: {exc}')
            try:
                if et is not None:
                    path = et.export_pte(wrapped, x, os.path.join(
                        tmp, 'm.pte'), name=r['network'])['path']
                    timing = et.time_executorch(path, x, threads, 1, runs,
                                                ref)
                    entry['et_ms'] = timing['median_ms']
                    entry['et_threads'] = timing['threads']
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                log(f'  ExecuTorch failed for {r["network"]}: {exc}')
        out[r['network']] = entry
        log(f'  [{i}/{len(networks)}] {r["network"]}@{res}: ' + ', '.join(
            f'{label} {entry[field]:.1f} ms' for label, field in PROXIES
            if field in entry))
    return out


def ranking_line(results: Dict[str, Any]) -> str:
    """Which method ranks Table 5 best (Spearman), and whether the mobile
    runtime (ExecuTorch) ranks it better than the other CPU proxies."""
    rho = {name: v[0]['spearman'] for name, v in results.items()
           if v[0]['spearman'] is not None}
    best = max(rho, key=rho.get)
    line = f'Best ranking of the Table 5 networks: {best} (Spearman {rho[best]:.2f}).'
    mobile = [n for n in rho if n.startswith('ExecuTorch')]
    others = [n for n in rho if n.startswith(('PyTorch', 'ONNX'))]
    if mobile and others:
        m = mobile[0]
        worse = [n for n in others if rho[n] >= rho[m]]
        line += (f' The mobile runtime ({m}, {rho[m]:.2f}) ranks them '
                 + ('better than every other CPU proxy.' if not worse else
                    'no better than ' + ', '.join(
                        f'{n} ({rho[n]:.2f})' for n in worse) + '.'))
    return line


def scaled(pairs: List[Tuple[Dict[str, Any], float]]):
    """One scale factor (geometric mean of published/proxy over timed rows),
    applied to every row; Failed rows keep the scaled proxy value."""
    timed = [(r, x) for r, x in pairs if r['latency_ms'] is not None]
    k = math.exp(sum(math.log(r['latency_ms'] / x) for r, x in timed) /
                 len(timed))
    return k, [(r, k * x) for r, x in pairs]


def swin_check(pairs) -> str:
    by = {r['network']: p for r, p in pairs}
    if 'Swin-T' not in by:
        return 'n/a'
    ratio = by['Swin-T'] / by['ResNet50'] if by.get('ResNet50') else None
    text = f'{ratio:.2f}x ResNet-50' if ratio else 'n/a'
    if getattr(by['Swin-T'], 'failed', False):
        text = 'predicted Failed; ' + text
    return text


def swin_ok(pairs) -> bool:
    by = {r['network']: p for r, p in pairs}
    s, r50 = by.get('Swin-T'), by.get('ResNet50')
    if s is None:
        return False
    return getattr(s, 'failed', False) or (r50 is not None and s > 2 * r50)


# -------------------------------------------------------------------- plot
def plot(train_pairs, held_pairs, path: str, title: str) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        log('matplotlib is not installed: no plot written')
        return None
    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
    fail_x = 60.0
    for pairs, marker, color, label in (
            (train_pairs, 'o', '#4477aa', 'fit rows: leave-one-family-out'),
            (held_pairs, 's', '#cc3311', 'held-out (Table 5, 512x512)')):
        xs = [r['latency_ms'] if r['latency_ms'] else fail_x
              for r, p in pairs]
        ys = [fail_x if getattr(p, 'failed', False) else min(float(p), 75)
              for r, p in pairs]
        ax.scatter(xs, ys, marker=marker, c=color, label=label, s=28,
                   alpha=0.85, edgecolors='k', linewidths=0.3)
        if marker == 's':
            for (r, p), x, y in zip(pairs, xs, ys):
                ax.annotate(r['network'], (x, y), fontsize=6,
                            xytext=(3, -3), textcoords='offset points')
    lim = (0.4, 80)
    ax.plot(lim, lim, 'k--', lw=0.8, label='y = x')
    ax.axhline(fail_x, color='grey', lw=0.5)
    ax.axvline(fail_x, color='grey', lw=0.5)
    ax.text(fail_x * 1.03, 0.45, 'Failed', fontsize=7, rotation=90)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel('published iPhone 13 Core ML latency (ms)')
    ax.set_ylabel('predicted (ms)')
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc='upper left')
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- validate
def cmd_validate(args) -> int:
    started = time.time()
    res = cmd_fit(args)
    params, usable, excluded = res['params'], res['usable'], res['excluded']
    log(f'chosen terms: {params["term_set"]}; Failed rule: '
        f'{params["failed_rule"]}')
    print(f'# Core ML latency predictor ({args.device}), '
          f'{platform.platform()}, python {platform.python_version()}')
    print(f'\nExcluded rows ({len(excluded)}):')
    for r, why in excluded:
        print(f'  {r["network"]}@{r["resolution"]} ({r["source"]}): {why}')
    print(f'\nFit: {len(res["train"])} rows, term set '
          f'{params["term_set"]!r}; coefficients:')
    for t, c in params['coef'].items():
        print(f'  {t:16s} {c:.6g} {params["units"][t]}')
    print(f'  Failed rule: {params["failed_rule"]}')

    lofo = params['validation']['lofo']
    print('\nLeave-one-family-out on the fit rows: median '
          f'{lofo["median_abs_pct"]:.1f}%, max {lofo["max_abs_pct"]:.0f}% '
          f'({lofo["worst"]}), Spearman {lofo["spearman"]:.2f}, Failed '
          f'{lofo["failed_right"]}/{lofo["failed_total"]}, false Failed '
          f'{lofo["false_failed"]}')

    # Table 17 in the fit set: in-sample predictions of the final fit
    t17 = [(r, M.predict(params, f)) for r, f in res['train']
           if r['source'] == 'Table 17' and r['resolution'] == 512]
    print('\nTable 17 at 512 (fit rows, in-sample):')
    for r, p in t17:
        print(f'  {r["network"]:28s} published {fmt(r["latency_ms"]):>7s} '
              f'predicted {fmt(p):>7s}')
    by = {r['key']: p for r, p in t17}
    g, h, c = (by.get('iformer-m-global-shma'),
               by.get('iformer-m-hybrid-shma'),
               by.get('iformer-m-cc-hybrid-shma'))
    t17_ok = (g is not None and getattr(g, 'failed', False) and
              h is not None and c is not None and h >= 2 * c)
    print(f'  order right (global Failed, hybrid >= 2x CC): {t17_ok}')

    held = [(r, f) for r, f in usable if r['role'] == 'heldout']
    M.check_no_leak(r for r, _ in res['train'])
    assert not {row_id(r['key'], r['resolution']) for r, _ in held} & \
        set(params['fit_rows']), 'held-out row in the fit set'
    held_pairs = [(r, M.predict(params, f)) for r, f in held]
    ours = M.errors(held_pairs)
    extra = [(r, M.predict(params, f)) for r, f in usable
             if r['role'] in ('heldout_alt', 'heldout_extra')]

    results = {'predictor (Core ML features)': (ours, swin_check(held_pairs),
                                                swin_ok(held_pairs))}
    proxy_rows = {}
    ops = [(r, float(f['total_ops'])) for r, f in held]
    k, sp = scaled(ops)
    results['Core ML op count (x1 scale)'] = (M.errors(sp), swin_check(sp),
                                              swin_ok(sp))
    proxy_rows['ops'] = sp
    if not args.no_proxies:
        log(f'timing CPU proxies on {len(held)} held-out networks '
            f'({args.threads} threads, {args.runs} runs) ...')
        times = measure_proxies([r for r, _ in held], args.threads,
                                args.runs)
        for name, field in PROXIES:
            pairs = [(r, times[r['network']][field]) for r, _ in held
                     if field in times[r['network']]]
            if len(pairs) < 3:
                continue
            k, sp = scaled(pairs)
            label = f'{name}, {args.threads} threads (x1 scale)'
            results[label] = (M.errors(sp), swin_check(sp), swin_ok(sp))
            proxy_rows[field] = sp

    print(f'\nHeld-out: Table 5, 512x512, {ours["n"]} timed rows + '
          f'{ours["failed_total"]} Failed (never fitted on):')
    print('| method | median abs err | max abs err | Spearman | Failed right '
          '| wrongly Failed | Swin-T |')
    print('|---|---|---|---|---|---|---|')
    for name, (e, swin, _) in results.items():
        print(f'| {name} | {e["median_abs_pct"]:.1f}% | '
              f'{e["max_abs_pct"]:.0f}% ({e["worst"]}) | {e["spearman"]:.2f} '
              f'| {e["failed_right"]}/{e["failed_total"]} | '
              f'{e["false_failed"]} | {swin} |')
    print('\n' + ranking_line(results))
    print('\nPer row (ms):')
    header = '  network              published     predicted'
    for key in proxy_rows:
        header += f'  {key:>8s}'
    print(header)
    for i, (r, p) in enumerate(held_pairs):
        line = (f'  {r["network"]:20s} {fmt(r["latency_ms"]):>9s} '
                f'{fmt(p):>13s}')
        for key, sp in proxy_rows.items():
            line += f'  {sp[i][1]:8.2f}'
        print(line)
    if extra:
        print('\nOther 512 rows (Table 13; not in the target metrics):')
        for r, p in extra:
            print(f'  {r["network"]:20s} {fmt(r["latency_ms"]):>7s} '
                  f'predicted {fmt(p):>7s}  ({r["role"]}: {r["note"]})')

    best_proxy = {k: v for k, v in results.items()
                  if not k.startswith('predictor')}
    def best(metric, lower=True):
        vals = [v[0][metric] for v in best_proxy.values()
                if v[0][metric] is not None]
        return (min(vals) if lower else max(vals)) if vals else None
    checks = [
        ('held-out median abs err <= 8%', ours['median_abs_pct'] <= 8),
        ('held-out max abs err <= 35%', ours['max_abs_pct'] <= 35),
        ('held-out Spearman >= 0.9', ours['spearman'] >= 0.9),
        ('Swin-T Failed or > 2x ResNet-50', swin_ok(held_pairs)),
        ('median better than best proxy',
         best('median_abs_pct') is None or
         ours['median_abs_pct'] < best('median_abs_pct')),
        ('max better than best proxy', best('max_abs_pct') is None or
         ours['max_abs_pct'] < best('max_abs_pct')),
        ('Spearman better than best proxy', best('spearman', False) is None
         or ours['spearman'] > best('spearman', False)),
        ('Table 17 order right', t17_ok),
        ('LOFO median <= 15%', lofo['median_abs_pct'] <= 15),
    ]
    print('\nTargets:')
    for name, ok in checks:
        print(f'  [{"x" if ok else " "}] {name}')

    params['validation']['heldout'] = ours
    params['validation']['heldout_rows'] = {
        r['network']: _jp(p) for r, p in held_pairs}
    params['validation']['table17'] = {r['network']: _jp(p) for r, p in t17}
    params['validation']['proxies'] = {k: v[0] for k, v in results.items()}
    params['validation']['targets'] = {n: bool(ok) for n, ok in checks}
    if not args.dry_run:
        path = M.save_params(params, args.params)
        log(f'parameters written to {os.path.relpath(path, ROOT)}')
        lofo_pairs = res['lofo']
        written = plot(lofo_pairs, held_pairs, args.plot,
                       f'{args.device} Core ML latency: predicted vs '
                       f'published\nheld-out median {ours["median_abs_pct"]:.0f}'
                       f'%, max {ours["max_abs_pct"]:.0f}%; LOFO median '
                       f'{lofo["median_abs_pct"]:.0f}%')
        if written:
            log(f'plot written to {os.path.relpath(written, ROOT)}')
    log(f'done in {time.time() - started:.0f} s')
    return 0


def cmd_extract(args) -> int:
    from iformer_mm.deploy.predictor.extract import extract_all
    extract_all(args.spec_cache, out_path=args.features,
                measurements=args.measurements, only=args.only or None,
                reconvert=args.reconvert, log=log)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('command', nargs='?', default='validate',
                        choices=('validate', 'fit', 'extract'))
    parser.add_argument('--measurements', default=MEASUREMENTS_PATH,
                        help='measurement CSV (default: the paper\'s)')
    parser.add_argument('--features', default=FEATURES_PATH,
                        help='cached features JSON')
    parser.add_argument('--device', default=DEFAULT_DEVICE,
                        help='fit only the rows of this device')
    parser.add_argument('--params', default=None,
                        help='where to write the parameters (default: '
                        'iformer_mm/deploy/data/predictor_<device>.json)')
    parser.add_argument('--plot', default=PLOT_PATH)
    parser.add_argument('--no-proxies', action='store_true',
                        help='skip timing the CPU proxies')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--dry-run', action='store_true',
                        help='write neither parameters nor plot')
    parser.add_argument('--spec-cache', default=os.path.join(
        tempfile.gettempdir(), 'iformer_mm_coreml_specs'))
    parser.add_argument('--only', nargs='*', help='extract: row ids '
                        'key@resolution')
    parser.add_argument('--reconvert', action='store_true')
    args = parser.parse_args(argv)
    for path in (args.measurements, ) + ((args.features, )
                                         if args.command != 'extract' else ()):
        if not os.path.exists(path):
            usage_error(f'{path} does not exist; pass an existing file '
                        '(run `extract` first for features).')
    if args.threads < 1 or args.runs < 1:
        usage_error('--threads and --runs must be >= 1.')
    try:
        load_measurements(args.measurements)
    except ValueError as exc:
        usage_error(f'{exc}')
    if args.command == 'extract':
        return cmd_extract(args)
    if args.command == 'fit':
        res = cmd_fit(args)
        if not args.dry_run:
            log(f'parameters written to {M.save_params(res["params"], args.params)}')
        lofo = res['params']['validation']['lofo']
        print(f'{args.device}: term set {res["params"]["term_set"]}, '
              f'leave-one-family-out median {lofo["median_abs_pct"]:.1f}%')
        return 0
    return cmd_validate(args)


if __name__ == '__main__':
    sys.exit(main())
