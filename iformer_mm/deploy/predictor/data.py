"""The published iPhone 13 Core ML measurements (``data/iphone13_coreml.csv``).

Columns: ``network`` (as the paper names it), ``key`` (reference-network
id), ``family`` (for leave-one-family-out validation), ``resolution``,
``params_m``, ``gmacs`` (blank where the table has none), ``latency_ms`` (a
number, or ``Failed``), ``source`` (the table), ``role``, ``note``.

Roles: ``fit`` (Table 18 and Table 17: the only rows a fit may use),
``heldout`` (Table 5 at 512x512: never used to fit or to choose the model),
``heldout_alt`` (Table 13's different figure for a Table 5 backbone: the
paper disagrees with itself), ``heldout_extra`` (Table 13 only), ``repeat``
(the same measurement printed twice; counted once, where it was first a
fit row). Rows a user adds have their own roles (``user``) and a
``device`` column; see :mod:`iformer_mm.deploy.predictor.model`.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Optional

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'data')
MEASUREMENTS_PATH = os.path.join(DATA_DIR, 'iphone13_coreml.csv')
COLUMNS = ('network', 'key', 'family', 'resolution', 'params_m', 'gmacs',
           'latency_ms', 'source', 'role', 'note')
ROLES = ('fit', 'heldout', 'heldout_alt', 'heldout_extra', 'repeat', 'user')
FAILED = 'Failed'
DEFAULT_DEVICE = 'iPhone 13'


def parse_latency(text: str) -> Optional[float]:
    """Milliseconds, or ``None`` for a published "Failed"."""
    text = text.strip()
    if text == FAILED:
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(f'A latency must be positive ms or "Failed", got '
                         f'{text!r}.')
    return value


def load_measurements(path: str = MEASUREMENTS_PATH) -> List[Dict[str, Any]]:
    """Rows of a measurement CSV with typed fields (``latency_ms`` None for
    Failed, ``failed`` bool, ``device`` defaulting to the iPhone 13)."""
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{path}: missing columns {missing}; expected '
                             f'{list(COLUMNS)} (+ optional device).')
        rows = []
        for n, raw in enumerate(reader, 2):
            try:
                row: Dict[str, Any] = dict(raw)
                row['resolution'] = int(raw['resolution'])
                row['params_m'] = float(raw['params_m'])
                row['gmacs'] = float(raw['gmacs']) if raw['gmacs'] else None
                row['latency_ms'] = parse_latency(raw['latency_ms'])
                row['failed'] = row['latency_ms'] is None
                row['device'] = (raw.get('device') or DEFAULT_DEVICE).strip()
                if row['role'] not in ROLES:
                    raise ValueError(f'unknown role {row["role"]!r}, one of '
                                     f'{ROLES}')
            except ValueError as exc:
                raise ValueError(f'{path}, line {n}: {exc}') from exc
            rows.append(row)
    return rows
