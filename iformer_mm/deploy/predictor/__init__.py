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

from typing import Any, Dict, Optional

from ..census import program_spec
from .data import DEFAULT_DEVICE, load_measurements  # noqa: F401


def predict_from_spec(spec, device: str = DEFAULT_DEVICE,
                      params: Optional[Dict[str, Any]] = None
                      ) -> Dict[str, Any]:
    """Predict the Core ML latency of a converted ML program spec.

    Returns ``dict(ms=float, failed=bool, device, label,
    heldout_median_pct, heldout_max_pct)``; ``failed`` when the stored
    "Failed" rule fires (``ms`` is then the cost model's number). The held-out errors are those of the stored fit
    on Table 5's 512x512 rows, to print next to every prediction.
    """
    from .features import program_features
    from .model import load_params, predict
    params = params or load_params(device)
    feats = program_features(spec)
    pred = predict(params, feats)
    held = (params.get('validation') or {}).get('heldout') or {}
    return dict(ms=float(pred), failed=pred.failed, device=params['device'],
                label=f'predicted {params["device"]} (Core ML)',
                heldout_median_pct=held.get('median_abs_pct'),
                heldout_max_pct=held.get('max_abs_pct'))


def predict_for_tool(mlmodel_or_spec) -> Dict[str, Any]:
    """:func:`predict_from_spec` for the latency tool's side column: never
    raises (a prediction is never a reason for a run to fail); a failure
    comes back as ``status='unavailable'`` with a short error."""
    try:
        return dict(predict_from_spec(program_spec(mlmodel_or_spec)),
                    status='predicted')
    except Exception as exc:  # noqa: BLE001 - reported in the cell
        return dict(status='unavailable',
                    error=f'{type(exc).__name__}: {exc}'[:200])
