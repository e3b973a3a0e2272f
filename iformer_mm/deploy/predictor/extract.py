"""Convert the reference networks to Core ML and extract their features.

Conversion (torch.export -> coremltools ML program, FP16, iOS17) runs on
Linux; Core ML itself cannot run here, so everything the predictor knows
about a network comes from the converted program (:mod:`.features`). The
serialized program spec of each conversion is kept in a cache folder, so
features can be recomputed without converting again, and the features of
all rows are stored in the repo (``data/features_iphone13.json``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from ..coreml import convert_module
from . import features as F
from .data import DATA_DIR, load_measurements
from .references import build_reference, check_params, library_version

FEATURES_PATH = os.path.join(DATA_DIR, 'features_iphone13.json')


def _register_alias_op() -> None:
    """coremltools 9.0's torch.export frontend has no converter for
    ``aten.alias`` (timm's GhostNetV3 and LowFormer emit it); an alias is
    an identity, which coremltools' graph passes then remove."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import (
        _TORCH_OPS_REGISTRY, register_torch_op)
    if _TORCH_OPS_REGISTRY.get_func('alias') is not None:
        return

    def alias(context, node):
        (x, ) = torch_ops._get_inputs(context, node, expected=1)
        context.add(mb.identity(x=x, name=node.name))

    register_torch_op(alias)


def convert_spec(model, resolution: int):
    """The ML program spec of ``model`` at ``resolution`` (not saved)."""
    import torch
    _register_alias_op()
    mlmodel, _ = convert_module(model, torch.randn(1, 3, resolution,
                                                   resolution))
    return mlmodel.get_spec()


def row_id(key: str, resolution: int) -> str:
    return f'{key}@{resolution}'


def extract_all(spec_cache: str, out_path: str = FEATURES_PATH,
                measurements: Optional[str] = None,
                only: Optional[List[str]] = None, reconvert: bool = False,
                log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Build, check, convert and featurize every distinct (network,
    resolution) of the measurement CSV; write ``out_path``.

    Args:
        spec_cache: folder for the serialized program specs (reused unless
            ``reconvert``).
        only: restrict to these row ids (``key@resolution``).
    """
    from coremltools.proto import Model_pb2
    rows = load_measurements(measurements) if measurements else \
        load_measurements()
    todo = {}
    for row in rows:
        rid = row_id(row['key'], row['resolution'])
        todo.setdefault(rid, row)
    if only:
        todo = {k: v for k, v in todo.items() if k in only}
    existing = {}
    if os.path.exists(out_path):
        with open(out_path) as f:
            existing = json.load(f).get('rows', {})
    os.makedirs(spec_cache, exist_ok=True)
    result = dict(existing)
    # cheapest first: small resolutions, then 512
    order = sorted(todo, key=lambda r: (todo[r]['resolution'], r))
    for i, rid in enumerate(order, 1):
        row = todo[rid]
        key, res = row['key'], row['resolution']
        entry: Dict[str, Any] = dict(key=key, resolution=res)
        start = time.time()
        try:
            model, info = build_reference(key, res)
        except KeyError as exc:
            entry.update(status='excluded', reason=str(exc.args[0]).split(
                ': ', 1)[-1])
            result[rid] = entry
            log(f'[{i}/{len(order)}] {rid}: excluded ({entry["reason"]})')
            continue
        entry['reference'] = info
        reason = check_params(info['params'], row['params_m'],
                              deployed=info['params_deployed'])
        if reason:
            entry.update(status='excluded', reason=reason)
            result[rid] = entry
            log(f'[{i}/{len(order)}] {rid}: excluded ({reason})')
            continue
        spec_path = os.path.join(spec_cache, rid + '.pb')
        try:
            if os.path.exists(spec_path) and not reconvert:
                spec = Model_pb2.Model()
                with open(spec_path, 'rb') as f:
                    spec.ParseFromString(f.read())
            else:
                spec = convert_spec(model, res)
                with open(spec_path, 'wb') as f:
                    f.write(spec.SerializeToString())
            entry.update(status='ok', features=F.program_features(spec))
        except Exception as exc:  # conversion failures are data, kept
            entry.update(status='excluded',
                         reason=f'Core ML conversion failed: '
                         f'{type(exc).__name__}: {str(exc)[:300]}')
        entry['seconds'] = round(time.time() - start, 1)
        result[rid] = entry
        log(f'[{i}/{len(order)}] {rid}: {entry["status"]} '
            f'({entry["seconds"]} s)' +
            (f' {entry.get("reason", "")}' if entry['status'] != 'ok' else ''))
        _write(out_path, result)  # keep progress
    _write(out_path, result)
    return result


def _write(out_path: str, result: Dict[str, Any]) -> None:
    """Sorted keys: a re-extraction's diff shows only what changed."""
    with open(out_path, 'w') as f:
        json.dump(_payload(result), f, indent=1, sort_keys=True)


def _payload(rows: Dict[str, Any]) -> Dict[str, Any]:
    versions = {}
    for name in ('torch', 'coremltools', 'timm', 'torchvision'):
        try:
            versions[name] = library_version(name)
        except Exception:  # noqa: BLE001 - a missing package is recorded
            versions[name] = None
    return dict(
        about='Features of the converted Core ML programs (FP16 ML program, '
        'iOS17 target) of the reference networks of iphone13_coreml.csv; '
        'regenerate with `python benchmarks/latency_predictor.py extract`.',
        feature_version=F.FEATURE_VERSION, versions=versions,
        python=sys.version.split()[0], rows=rows)
