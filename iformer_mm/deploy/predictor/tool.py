"""The latency tool's "predicted iPhone 13 (Core ML)" column (issue 13).

Kept apart from the tool's own modules: :func:`predict_for_tool` never
raises (a prediction is a side column, never a reason for a run to fail)
and :func:`predicted_cell` always says "predicted" and prints the stored
fit's held-out error next to the number.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from . import predict_from_spec

#: Column header of the latency table.
PREDICTED_HEADER = ('predicted iPhone 13 (Core ML) ms, not measured '
                    '(held-out error of the predictor)')


def predict_for_tool(mlmodel_or_spec) -> Dict[str, Any]:
    """Prediction for a converted ``MLModel`` (or its spec)."""
    try:
        get_spec = getattr(mlmodel_or_spec, 'get_spec', None)
        spec = get_spec() if callable(get_spec) else mlmodel_or_spec
        return dict(predict_from_spec(spec), status='predicted')
    except Exception as exc:  # noqa: BLE001 - reported in the cell
        return dict(status='unavailable',
                    error=f'{type(exc).__name__}: {exc}'[:200])


def _error_note(pred: Dict[str, Any]) -> str:
    med, mx = pred.get('heldout_median_pct'), pred.get('heldout_max_pct')
    if med is None or mx is None:
        return 'predicted; held-out error unknown'
    return f'predicted; held-out err {med:.0f}% median, {mx:.0f}% max'


def predicted_cell(pred: Optional[Dict[str, Any]]) -> str:
    """Markdown cell: ``4.12 (predicted; held-out err 9% median, 30% max)``."""
    if not pred:
        return '–'
    if pred.get('status') != 'predicted':
        return f"no prediction ({pred.get('error', 'not converted')[:60]})"
    if pred['failed']:
        return f'Failed ({_error_note(pred)})'
    ms = pred['ms']
    text = f'{ms:.2f}' if ms < 100 else f'{ms:.0f}'
    return f'{text} ({_error_note(pred)})'
