"""An inspectable Core ML latency model, calibrated on published figures.

Latency is an additive roofline: for every op class of
:data:`~.features.CLASSES`, a non-negative cost per GMAC (compute) and per
MB moved (activations read + written), plus a cost per weight MB, a cost
per op (dispatch overhead) and a constant::

    ms = sum_c a_c * GMACs_c + sum_c b_c * MB_c + w * weight_MB
         + o * ops + k

The coefficients are fitted with non-negative least squares on relative
errors (``scipy.optimize.nnls`` on rows divided by their latency), so a
0.6 ms and a 12 ms network weigh the same, and every coefficient reads as
"ms per unit". Which terms enter (:data:`TERM_SETS`) is chosen by
leave-one-family-out error on the fit rows only.

"Failed" (Core ML ran too long to report) is a separate one-feature rule
(:func:`fit_failed_rule`): a threshold on one of :data:`FAILED_FEATURES`,
chosen on the fit rows' published "Failed" entries.

Each device gets its own fit: :func:`fit` uses only the rows of one
``device`` and the parameters record it, so an iPhone 13 fit is never
mixed with measurements of another phone (see the module
:mod:`iformer_mm.deploy.predictor` for refitting with your own rows).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, \
    Tuple

import numpy as np

from .data import DATA_DIR, DEFAULT_DEVICE
from .features import CLASSES, TRANSPOSE_SIZES

MODEL_VERSION = 1
FIT_ROLES = ('fit', 'user')
FIT_SOURCES = ('Table 17', 'Table 18')
_MB = 1e6
_G = 1e9


def _class_macs(cls: str) -> Callable[[Dict[str, Any]], float]:
    return lambda f: f['by_class'][cls]['macs'] / _G


def _class_mb(*classes: str) -> Callable[[Dict[str, Any]], float]:
    return lambda f: sum(f['by_class'][c]['bytes_in'] +
                         f['by_class'][c]['bytes_out'] for c in classes) / _MB


#: Every term the model can use: name -> (function of the features, unit).
TERMS: Dict[str, Tuple[Callable[[Dict[str, Any]], float], str]] = {
    'gmacs_conv': (_class_macs('conv'), 'ms/GMAC'),
    'gmacs_conv_dw': (_class_macs('conv_dw'), 'ms/GMAC'),
    'gmacs_linear': (_class_macs('linear'), 'ms/GMAC'),
    'gmacs_matmul': (_class_macs('matmul'), 'ms/GMAC'),
    'gmacs_all': (lambda f: f['macs'] / _G, 'ms/GMAC'),
    **{f'mb_{c}': (_class_mb(c), 'ms/MB') for c in CLASSES},
    'mb_memory': (_class_mb('elementwise', 'norm', 'pool', 'rearrange',
                            'other'), 'ms/MB'),
    'mb_all': (lambda f: (f['bytes_in'] + f['bytes_out']) / _MB, 'ms/MB'),
    'mb_weights': (lambda f: f['bytes_const'] / _MB, 'ms/MB'),
    **{f'mb_transpose_over_{size // 1024}k': (
        (lambda s: lambda f: f['transpose_bytes_over'][str(s)] / _MB)(size),
        'ms/MB') for size in TRANSPOSE_SIZES},
    'mb_rank5': (lambda f: f['rank5_bytes'] / _MB, 'ms/MB'),
    'ops': (lambda f: float(f['total_ops']), 'ms/op'),
    'const': (lambda f: 1.0, 'ms'),
}

#: Candidate term sets, from coarse to fine; :func:`select_terms` picks one
#: by leave-one-family-out error on the fit rows.
TERM_SETS: Dict[str, Tuple[str, ...]] = {
    'macs+bytes+ops': ('gmacs_all', 'mb_all', 'mb_weights', 'ops', 'const'),
    'compute-classes+memory': (
        'gmacs_conv', 'gmacs_conv_dw', 'gmacs_linear', 'gmacs_matmul',
        'mb_memory', 'mb_transpose', 'mb_weights', 'ops', 'const'),
    'per-class roofline': (
        'gmacs_conv', 'gmacs_conv_dw', 'gmacs_linear', 'gmacs_matmul',
        'mb_conv', 'mb_conv_dw', 'mb_linear', 'mb_matmul', 'mb_elementwise',
        'mb_norm', 'mb_pool', 'mb_transpose', 'mb_rearrange', 'mb_other',
        'mb_weights', 'ops', 'const'),
    'compute-classes+memory+rank5': (
        'gmacs_conv', 'gmacs_conv_dw', 'gmacs_linear', 'gmacs_matmul',
        'mb_memory', 'mb_transpose', 'mb_rank5', 'mb_weights', 'ops',
        'const'),
    'per-class roofline+rank5': (
        'gmacs_conv', 'gmacs_conv_dw', 'gmacs_linear', 'gmacs_matmul',
        'mb_conv', 'mb_conv_dw', 'mb_linear', 'mb_matmul', 'mb_elementwise',
        'mb_norm', 'mb_pool', 'mb_transpose', 'mb_rearrange', 'mb_other',
        'mb_rank5', 'mb_weights', 'ops', 'const'),
    **{f'per-class roofline, large transposes > {size // 1024} KB': (
        'gmacs_conv', 'gmacs_conv_dw', 'gmacs_linear', 'gmacs_matmul',
        'mb_conv', 'mb_conv_dw', 'mb_linear', 'mb_matmul', 'mb_elementwise',
        'mb_norm', 'mb_pool', 'mb_transpose', f'mb_transpose_over_'
        f'{size // 1024}k', 'mb_rearrange', 'mb_other', 'mb_weights', 'ops',
        'const') for size in TRANSPOSE_SIZES},
}

#: Features a "Failed" rule may threshold (all in bytes, except max_rank).
FAILED_FEATURES = ('largest_tensor_bytes', 'largest_matmul_out_bytes',
                   'largest_rank5_bytes', 'rank5_bytes', 'matmul_mb',
                   'transpose_mb')


def failed_feature(features: Dict[str, Any], name: str) -> float:
    if name == 'matmul_mb':
        return TERMS['mb_matmul'][0](features)
    if name == 'transpose_mb':
        return TERMS['mb_transpose'][0](features)
    return float(features[name])


def design(features: Sequence[Dict[str, Any]], terms: Sequence[str]
           ) -> np.ndarray:
    return np.array([[TERMS[t][0](f) for t in terms] for f in features],
                    dtype=np.float64)


#: Apple's figure for the A15 Neural Engine of the iPhone 13: 15.8 trillion
#: operations per second. A multiply-accumulate is 2 operations, so no
#: GMAC can cost less than this (ms): the floor of every compute term of an
#: iPhone 13 fit. It is hardware data, not fitted, and taken from no table.
IPHONE13_MS_PER_GMAC_FLOOR = 2e9 / 15.8e12 * 1e3
DEVICE_FLOORS: Dict[str, Dict[str, float]] = {
    DEFAULT_DEVICE: {t: IPHONE13_MS_PER_GMAC_FLOOR for t in (
        'gmacs_conv', 'gmacs_conv_dw', 'gmacs_linear', 'gmacs_matmul',
        'gmacs_all')},
}


def nnls_relative(x: np.ndarray, y: np.ndarray,
                  floor: Optional[np.ndarray] = None) -> np.ndarray:
    """``b >= floor`` (default 0) minimising ``sum(((x @ b) - y) / y) ** 2)``.
    """
    from scipy.optimize import nnls
    a = x / y[:, None]
    lb = np.zeros(a.shape[1]) if floor is None else np.asarray(floor, float)
    target = np.ones(len(y)) - a @ lb
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, target, maxiter=50 * a.shape[1])
    return lb + coef / scale


class LeakError(ValueError):
    """A row that must stay held out reached a fit."""


def check_no_leak(rows: Iterable[Dict[str, Any]]) -> None:
    """Raise :class:`LeakError` if any row is not a fit row: the Table 5 /
    Table 13 512x512 rows are never used to fit or to choose the model."""
    bad = [f'{r["network"]}@{r["resolution"]} ({r["source"]}, {r["role"]})'
           for r in rows
           if r['role'] not in FIT_ROLES or
           (r['role'] == 'fit' and r['source'] not in FIT_SOURCES)]
    if bad:
        raise LeakError('held-out rows must never be fitted on: ' +
                        ', '.join(bad))


def fit_latency(rows: Sequence[Dict[str, Any]],
                features: Sequence[Dict[str, Any]], terms: Sequence[str],
                floors: Optional[Dict[str, float]] = None
                ) -> Dict[str, float]:
    """Coefficients (name -> value) of ``terms`` on rows with a latency;
    ``floors`` gives a lower bound per term (default 0)."""
    y = np.array([r['latency_ms'] for r in rows], dtype=np.float64)
    floor = np.array([(floors or {}).get(t, 0.0) for t in terms])
    coef = nnls_relative(design(features, terms), y, floor)
    return {t: float(c) for t, c in zip(terms, coef)}


def predict_ms(coef: Dict[str, float], features: Dict[str, Any]) -> float:
    return float(sum(c * TERMS[t][0](features) for t, c in coef.items()))


def contributions(coef: Dict[str, float], features: Dict[str, Any]
                  ) -> Dict[str, float]:
    """Milliseconds each term adds for one network (what to inspect)."""
    return {t: c * TERMS[t][0](features) for t, c in coef.items()}


def fit_failed_rule(rows: Sequence[Dict[str, Any]],
                    features: Sequence[Dict[str, Any]]
                    ) -> Optional[Dict[str, Any]]:
    """The one-feature threshold that best separates "Failed" rows.

    For each feature of :data:`FAILED_FEATURES`, the threshold is the
    geometric mean of the largest value among rows that ran and the
    smallest among rows that failed; the rule with the fewest errors wins
    (ties: the widest margin, then the order of the list). ``None`` when
    the rows have no "Failed" entry.
    """
    failed = [f for r, f in zip(rows, features) if r['failed']]
    ran = [f for r, f in zip(rows, features) if not r['failed']]
    if not failed or not ran:
        return None
    best = None
    for name in FAILED_FEATURES:
        fv = sorted(failed_feature(f, name) for f in failed)
        rv = sorted(failed_feature(f, name) for f in ran)
        # candidate thresholds: between each value of the two sets
        values = sorted(set(fv + rv))
        for lo, hi in zip(values, values[1:]):
            if lo <= 0:
                continue
            thr = math.sqrt(lo * hi)
            errors = sum(v <= thr for v in fv) + sum(v > thr for v in rv)
            margin = hi / lo
            cand = (errors, -margin, FAILED_FEATURES.index(name))
            if best is None or cand < best[0]:
                best = (cand, dict(feature=name, threshold=thr,
                                   errors_on_fit=errors,
                                   failed_on_fit=len(fv), ran_on_fit=len(rv),
                                   margin=margin))
    return best[1] if best else None


def predicts_failed(rule: Optional[Dict[str, Any]],
                    features: Dict[str, Any]) -> bool:
    return bool(rule) and failed_feature(features, rule['feature']) > \
        rule['threshold']


def fit(rows: Sequence[Dict[str, Any]], features: Sequence[Dict[str, Any]],
        terms: Sequence[str], device: str = DEFAULT_DEVICE,
        check_leak: bool = True,
        floors: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """Fit the latency terms and the "Failed" rule on one device's rows.

    Args:
        rows: measurement rows (:func:`~.data.load_measurements`), each with
            its ``features`` at the same index of ``features``.
        terms: names of :data:`TERMS`.
        device: only rows of this device are used; the result records it.
        check_leak: refuse held-out rows (:func:`check_no_leak`).
        floors: lower bounds of coefficients; default: the device's
            :data:`DEVICE_FLOORS` (the iPhone 13's peak compute rate), none
            for other devices.
    """
    if floors is None:
        floors = DEVICE_FLOORS.get(device, {})
    pairs = [(r, f) for r, f in zip(rows, features)
             if r.get('device', DEFAULT_DEVICE) == device]
    if not pairs:
        devices = sorted({r.get('device', DEFAULT_DEVICE) for r in rows})
        raise ValueError(f'No measurement rows for device {device!r}; the '
                         f'rows are for {devices}.')
    if check_leak:
        check_no_leak(r for r, _ in pairs)
    timed = [(r, f) for r, f in pairs if not r['failed']]
    if len(timed) < len(terms):
        raise ValueError(f'{len(timed)} timed rows cannot fit {len(terms)} '
                         f'terms; add measurements or use fewer terms.')
    coef = fit_latency([r for r, _ in timed], [f for _, f in timed], terms,
                       floors)
    rule = fit_failed_rule([r for r, _ in pairs], [f for _, f in pairs])
    return dict(model_version=MODEL_VERSION, device=device, terms=list(terms),
                coef=coef, units={t: TERMS[t][1] for t in terms},
                floors={t: floors[t] for t in terms if t in floors},
                failed_rule=rule,
                fit_rows=sorted(f'{r["key"]}@{r["resolution"]}'
                                for r, _ in pairs))


class Prediction(float):
    """Predicted milliseconds (the cost model's value, always a number),
    with ``failed`` set when the "Failed" rule fires. Errors are scored on
    the number, so a wrong "Failed" never hides a row from the metrics."""
    failed: bool

    def __new__(cls, ms: float, failed: bool = False) -> 'Prediction':
        obj = super().__new__(cls, ms)
        obj.failed = bool(failed)
        return obj


def predict(params: Dict[str, Any], features: Dict[str, Any]
            ) -> Prediction:
    """Predicted ms; ``.failed`` when the "Failed" rule fires."""
    return Prediction(predict_ms(params['coef'], features),
                      predicts_failed(params.get('failed_rule'), features))


def accept_failed_rule(params: Dict[str, Any],
                       lofo: Dict[str, Any]) -> Dict[str, Any]:
    """Keep the "Failed" rule only if leave-one-family-out shows it works:
    it flags at least one held-out-family "Failed" row and no row that ran.
    Otherwise it is dropped (recorded under ``failed_rule_rejected``): a
    rule the fit set cannot validate must not label networks "Failed"."""
    rule = params.get('failed_rule')
    if rule is None:
        return params
    if lofo['failed_right'] == 0 or lofo['false_failed'] > 0:
        params['failed_rule_rejected'] = dict(
            rule=rule, reason=f'leave-one-family-out: {lofo["failed_right"]}'
            f'/{lofo["failed_total"]} Failed rows flagged, '
            f'{lofo["false_failed"]} rows that ran flagged')
        params['failed_rule'] = None
    return params


def leave_one_family_out(rows: Sequence[Dict[str, Any]],
                         features: Sequence[Dict[str, Any]],
                         terms: Sequence[str], device: str = DEFAULT_DEVICE,
                         floors: Optional[Dict[str, float]] = None
                         ) -> List[Tuple[Dict[str, Any], Optional[float]]]:
    """Predict every row from a fit on the other families only."""
    out = []
    for family in sorted({r['family'] for r in rows}):
        train = [(r, f) for r, f in zip(rows, features)
                 if r['family'] != family]
        params = fit([r for r, _ in train], [f for _, f in train], terms,
                     device=device, floors=floors)
        out += [(r, predict(params, f)) for r, f in zip(rows, features)
                if r['family'] == family]
    return out


def errors(pairs: Iterable[Tuple[Dict[str, Any], Optional[float]]]
           ) -> Dict[str, Any]:
    """Median / max absolute % error and Spearman over every row with a
    published time (a prediction flagged "Failed" is scored on its number
    and counted in ``false_failed``); "Failed" rows flagged right."""
    from scipy.stats import spearmanr
    pairs = [(r, p) for r, p in pairs if p is not None]
    timed = [(r, p) for r, p in pairs if r['latency_ms'] is not None]
    pct = [abs(float(p) / r['latency_ms'] - 1) * 100 for r, p in timed]
    worst = timed[int(np.argmax(pct))][0]['network'] if pct else None
    failed_rows = [(r, p) for r, p in pairs if r['failed']]
    return dict(
        n=len(timed),
        median_abs_pct=float(np.median(pct)) if pct else None,
        max_abs_pct=float(max(pct)) if pct else None, worst=worst,
        spearman=(float(spearmanr([r['latency_ms'] for r, _ in timed],
                                  [float(p) for _, p in timed]).statistic)
                  if len(timed) > 2 else None),
        failed_right=sum(getattr(p, 'failed', False) for _, p in failed_rows),
        failed_total=len(failed_rows),
        false_failed=sum(getattr(p, 'failed', False) for _, p in timed))


def select_terms(rows: Sequence[Dict[str, Any]],
                 features: Sequence[Dict[str, Any]],
                 candidates: Dict[str, Sequence[str]] = TERM_SETS,
                 device: str = DEFAULT_DEVICE
                 ) -> Tuple[str, Dict[str, Dict[str, Any]]]:
    """Pick the term set with the lowest leave-one-family-out median error
    (ties: fewer terms) on ``rows`` -- fit rows only (checked)."""
    check_no_leak(rows)
    scores = {}
    for name, terms in candidates.items():
        scores[name] = errors(leave_one_family_out(rows, features, terms,
                                                   device))
    best = min(candidates, key=lambda n: (scores[n]['median_abs_pct'],
                                          len(candidates[n])))
    return best, scores


def params_path(device: str = DEFAULT_DEVICE) -> str:
    slug = ''.join(ch if ch.isalnum() else '_' for ch in device.lower())
    return os.path.join(DATA_DIR, f'predictor_{slug.strip("_")}.json')


def save_params(params: Dict[str, Any], path: Optional[str] = None) -> str:
    path = path or params_path(params['device'])
    with open(path, 'w') as f:
        json.dump(params, f, indent=1, sort_keys=True)
        f.write('\n')
    return path


def load_params(device: str = DEFAULT_DEVICE,
                path: Optional[str] = None) -> Dict[str, Any]:
    path = path or params_path(device)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f'No fitted latency model for {device!r} at {path}; fit one with '
            '`python benchmarks/latency_predictor.py fit --device ...`.')
    with open(path) as f:
        params = json.load(f)
    if params.get('device') != device:
        raise ValueError(f'{path} holds a fit for {params.get("device")!r}, '
                         f'not {device!r}: fits are per device.')
    return params
