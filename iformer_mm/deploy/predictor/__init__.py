"""Predicted iPhone 13 Core ML latency from a converted program (any OS).

The paper publishes iPhone 13 Core ML latencies for ~60 networks at
224-288 px (Table 18) and 17 backbones at 512x512 (Table 5; Table 17 adds
three iFormer-M attention layouts). This package keeps them as data
(``iformer_mm/deploy/data/iphone13_coreml.csv``), rebuilds the networks it
can offline (:mod:`.references`), reads features of their converted Core
ML programs (:mod:`.features`) and fits an inspectable cost model
(:mod:`.model`) on Table 18 + Table 17 only; Table 5's 512x512 rows are the
held-out test. ``python benchmarks/latency_predictor.py`` refits and
validates; the fitted parameters and their held-out error live in
``data/predictor_iphone_13.json``.

Extension point -- your own device or measurements:

1. Add rows in the CSV format of :mod:`.data` (same columns plus a
   ``device`` column, e.g. ``iPhone 15 Pro``; role ``user``; ``key`` one of
   :data:`.references.REFERENCES` or ``timm:<model>`` /
   ``torchvision:<model>``) to a CSV of your own. The latency tool's
   ``--device`` timing on a Mac writes such rows.
2. ``python benchmarks/latency_predictor.py extract --measurements my.csv``
   converts the new networks and caches their features;
   ``python benchmarks/latency_predictor.py fit --measurements my.csv
   --device "iPhone 15 Pro"`` fits that device alone and writes
   ``data/predictor_iphone_15_pro.json``. Rows of other devices are never
   mixed into a fit (:func:`.model.fit` filters by device and the
   parameters record it; :func:`.model.load_params` refuses a mismatch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..census import program_spec
from ..coreml import DEFAULT_IOS_TARGET
from .data import DEFAULT_DEVICE, load_measurements  # noqa: F401

#: How the stored validation converted its programs
#: (:func:`.extract.convert_spec`): a prediction for a program converted
#: otherwise is not covered by the stored errors.
VALIDATED_CONVERSION = dict(precision='fp16', ios_target=DEFAULT_IOS_TARGET,
                            input_type='tensor')
#: The resolution of the held-out rows (Table 5).
HELDOUT_SIZE = (512, 512)


@dataclass(frozen=True)
class Program:
    """What a converted program is, as far as the stored errors care.

    ``kind`` is ``'classifier'`` (the whole network with its head, one
    output: the program of the authors' ``export_coreml.py``) or
    ``'dense'`` (a detection / segmentation backbone with several
    outputs); ``excluded`` is ``None`` for a reference network whose
    classifier the stored validation converted (:func:`excluded_reason`),
    else why it is not one.
    """
    kind: str
    excluded: Optional[str]
    size: Tuple[int, int]
    precision: str = 'fp16'
    ios_target: str = DEFAULT_IOS_TARGET
    input_type: str = 'tensor'
    outputs: int = 1


def _fit_sizes(params: Dict[str, Any]) -> List[int]:
    return sorted({int(rid.rsplit('@', 1)[1]) for rid in params['fit_rows']})


def excluded_reason(key: str) -> Optional[str]:
    """``None`` when the reference network ``key`` is one of those the
    stored fit and validation converted (a shipped features row that is
    ``ok``; every iFormer arch and layout, whose family is fitted), else
    why not (e.g. its parameters differ from the published network's)."""
    import json

    from .extract import FEATURES_PATH
    from .references import reference_for
    if reference_for(key).library == 'iformer_mm':
        return None
    with open(FEATURES_PATH) as f:
        rows = [r for r in json.load(f)['rows'].values() if r['key'] == key]
    if any(r['status'] == 'ok' for r in rows):
        return None
    if rows:
        return 'its reference network was excluded: ' + '; '.join(
            sorted({r['reason'] for r in rows}))
    return 'not one of the validated reference networks'


def validation_for(params: Dict[str, Any], program: Program
                   ) -> Dict[str, Any]:
    """The measured error that applies to a prediction for ``program``.

    Returns ``dict(scope='heldout' | 'lofo', median_abs_pct,
    max_abs_pct, spearman, about)`` for a reference network's classifier
    converted as the validation converted it: the held-out Table 5 errors at
    512x512, the leave-one-family-out errors of the fit rows at a fit
    resolution. Anything else gets ``dict(scope=None, reason)``: no error
    measured on another path is borrowed.
    """
    why = []
    if program.kind != 'classifier':
        why.append(f'{program.kind} program with {program.outputs} '
                   'outputs')
    elif program.excluded:
        why.append(program.excluded)
    for name, want in VALIDATED_CONVERSION.items():
        if getattr(program, name) != want:
            why.append(f'{name} {getattr(program, name)}')
    h, w = program.size
    validation = params.get('validation') or {}
    if not why and (h, w) == HELDOUT_SIZE and validation.get('heldout'):
        return dict(validation['heldout'], scope='heldout',
                    about=f'held-out, Table 5 at {h}x{w}')
    if not why and h == w and h in _fit_sizes(params) and \
            validation.get('lofo'):
        return dict(validation['lofo'], scope='lofo',
                    about='leave-one-family-out on the fit rows')
    if not why:
        why.append(f'no validation at {h}x{w}')
    return dict(scope=None, reason='not validated for this kind of network ('
                + ', '.join(why) + ')')


def predict_from_spec(spec, device: str = DEFAULT_DEVICE,
                      params: Optional[Dict[str, Any]] = None,
                      program: Optional[Program] = None) -> Dict[str, Any]:
    """Predict the Core ML latency of a converted ML program spec.

    Returns ``dict(ms=float, failed=bool, device, label, validation)``;
    ``failed`` when the stored "Failed" rule fires (``ms`` is then the cost
    model's number); ``validation`` is :func:`validation_for` of
    ``program`` (a reference classifier at 512x512 when not given).
    """
    from .features import program_features
    from .model import load_params, predict
    params = params or load_params(device)
    feats = program_features(spec)
    pred = predict(params, feats)
    program = program or Program('classifier', None, HELDOUT_SIZE)
    return dict(ms=float(pred), failed=pred.failed, device=params['device'],
                label=f'predicted {params["device"]} (Core ML)',
                validation=validation_for(params, program))


def predict_for_tool(mlmodel_or_spec, program: Program,
                     device: str = DEFAULT_DEVICE,
                     params: Optional[Dict[str, Any]] = None
                     ) -> Dict[str, Any]:
    """:func:`predict_from_spec` for the latency tool's side column (with
    ``params`` already loaded, once a run): never raises (a prediction is
    never a reason for a run to fail); a failure comes back as
    ``status='unavailable'`` with a short error."""
    try:
        return dict(predict_from_spec(program_spec(mlmodel_or_spec), device,
                                      params=params, program=program),
                    status='predicted')
    except Exception as exc:  # noqa: BLE001 - reported in the cell
        return dict(status='unavailable',
                    error=f'{type(exc).__name__}: {exc}'[:200])


#: The three scores a method is compared on, and which way is better.
SCORES = (('median_abs_pct', False), ('max_abs_pct', False),
          ('spearman', True))
PREDICTOR = 'predictor (Core ML features)'
_NAMES = dict(median_abs_pct='median error', max_abs_pct='max error',
              spearman='Spearman')


def _beats(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    """The scores on which ``a`` is strictly better than ``b``."""
    out = []
    for name, higher in SCORES:
        x, y = a.get(name), b.get(name)
        if x is not None and y is not None and (x > y if higher else x < y):
            out.append(name)
    return out


def rank_methods(methods: Dict[str, Dict[str, Any]]) -> List[str]:
    """Methods (the predictor and the scaled proxies, each with its held-out
    scores) best first: by how many pairwise contests on
    :data:`SCORES` a method wins (a contest is won on more scores than
    lost), then by median error. A method beaten by another is never ranked
    above it on that ground alone."""
    def wins(name):
        return sum(len(_beats(methods[name], methods[o])) >
                   len(_beats(methods[o], methods[name]))
                   for o in methods if o != name)
    return sorted(methods, key=lambda n: (
        -wins(n), methods[n].get('median_abs_pct') or float('inf'), n))


def proxy_verdict(params: Dict[str, Any]) -> Optional[str]:
    """One line on how the predictor compares with the CPU proxies on the
    held-out rows of the stored validation; ``None`` when it has no proxy
    scores."""
    methods = {k: v for k, v in ((params.get('validation') or {})
                                 .get('proxies') or {}).items()}
    if PREDICTOR not in methods or len(methods) < 2:
        return None
    order = rank_methods(methods)

    def score(name):
        m = methods[name]
        return (f'{name}: {m["median_abs_pct"]:.0f}% median, '
                f'{m["max_abs_pct"]:.0f}% max, Spearman '
                f'{m["spearman"]:.3f}')
    beaten = {o: _beats(methods[o], methods[PREDICTOR])
              for o in methods if o != PREDICTOR}
    beaten = {o: s for o, s in beaten.items() if s}
    head = ('Table 5 held-out rows, ranked by pairwise wins on median '
            'error, max error and Spearman: ' + '; '.join(
        f'{i}. {score(n)}' for i, n in enumerate(order, 1)) + '.')
    if not beaten:
        return head + ' The predictor beats every proxy on every score.'
    return head + ' ' + ' '.join(
        f'{o} beats the predictor on {", ".join(_NAMES[n] for n in s)}.'
        for o, s in beaten.items())

