"""Tests of the Core ML latency predictor: the published data against the
paper, feature extraction against hand counts, the fit on a fixture, the
no-leak rule and per-device fits.

The fit/validation on the real data is a benchmark
(``benchmarks/latency_predictor.py``), not a test.
"""
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from iformer_mm.deploy.predictor import data as D
from iformer_mm.deploy.predictor import model as M
from iformer_mm.deploy.predictor.features import (CLASSES, TRANSPOSE_SIZES,
                                                   summarize)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_COREMLTOOLS = importlib.util.find_spec('coremltools') is not None
needs_ct = pytest.mark.skipif(not HAS_COREMLTOOLS,
                              reason='coremltools not installed')
#: Tables 5, 13, 17 and 18 of the paper, verbatim.
PAPER = os.path.join(ROOT, 'tests', 'data', 'iformer_paper_tables.md')


# ---------------------------------------------------------------- the data
def _paper_tables():
    """{table: {name: cells}} from the paper's tab-separated tables, parsed
    independently of the script that wrote the CSV."""
    lines = open(PAPER, encoding='utf-8').read().splitlines()
    tables, current = {}, None
    for line in lines:
        m = re.match(r'^Table (\d+):', line)
        if m:
            current = f'Table {m.group(1)}'
            tables.setdefault(current, {})
            continue
        if current is None or '\t' not in line:
            continue
        cells = [re.sub(r'<[^>]+>', '', c).strip() for c in line.split('\t')]
        name = re.sub(r'\s*\((?:\d{4}[ab]?|Liu et al\., 2022)\)', '',
                      cells[0]).replace('†', '').replace('*', '').strip()
        name = ' '.join(name.split())
        if name:
            tables[current].setdefault(name, cells)
    return tables


@pytest.fixture(scope='module')
def rows():
    return D.load_measurements()


@pytest.fixture(scope='module')
def shipped_features():
    """The shipped feature file's rows, by row id (``key@resolution``)."""
    from iformer_mm.deploy.predictor.extract import FEATURES_PATH
    with open(FEATURES_PATH) as f:
        return json.load(f)['rows']


def test_csv_schema_roles_and_sources(rows):
    with open(D.MEASUREMENTS_PATH, newline='') as f:
        header = next(csv.reader(f))
    assert tuple(header) == D.COLUMNS
    assert {r['source'] for r in rows} == {'Table 5', 'Table 13', 'Table 17',
                                           'Table 18'}
    seen = set()
    for r in rows:
        ident = (r['network'], r['resolution'], r['source'])
        assert ident not in seen, ident
        seen.add(ident)
        assert r['role'] in D.ROLES
        assert r['failed'] == (r['latency_ms'] is None)
        if r['source'] in ('Table 5', 'Table 13'):
            assert r['resolution'] == 512
            assert r['role'] in ('heldout', 'heldout_alt', 'heldout_extra',
                                 'repeat')
        else:
            assert r['role'] in ('fit', 'repeat')
    by = {(r['network'], r['source']): r for r in rows}
    # a few numbers read off the paper by hand
    assert by[('PVTv2-B1', 'Table 5')]['latency_ms'] == 27.0
    assert by[('Swin-T', 'Table 5')]['failed']
    assert by[('iFormer-M (hybrid SHMA)', 'Table 17')]['latency_ms'] == 11.46
    assert by[('iFormer-M (global SHMA)', 'Table 17')]['failed'] is True
    assert by[('MobileViTV2-0.5', 'Table 18')]['latency_ms'] == 9.47
    assert by[('iFormer-M', 'Table 5')]['role'] == 'repeat'
    # where the paper disagrees with itself, both rows are kept and say so
    for name, (t5, t13) in {'PoolFormer-S24': (10.0, 12.30),
                            'ConvNeXt-T': (13.6, 12.6)}.items():
        a, b = by[(name, 'Table 5')], by[(name, 'Table 13')]
        assert (a['latency_ms'], b['latency_ms']) == (t5, t13)
        assert 'disagrees' in a['note'] and 'disagrees' in b['note']


def test_load_measurements_rejects_bad_rows(tmp_path):
    path = tmp_path / 'bad.csv'
    with open(D.MEASUREMENTS_PATH) as f:
        text = f.read()
    for bad in ('slow', '-27.00', '0'):  # not a number, not positive
        path.write_text(text.replace('27.00,Table 5', f'{bad},Table 5'))
        with pytest.raises(ValueError, match=r'line \d+'):
            D.load_measurements(str(path))
    path.write_text(text.replace('network,key', 'net,key'))
    with pytest.raises(ValueError, match='missing columns'):
        D.load_measurements(str(path))


def test_every_row_matches_the_paper(rows):
    tables = _paper_tables()
    t17 = {'iFormer-M (global SHMA)': 'SHMA',
           'iFormer-M (hybrid SHMA)': 'Hybrid SHMA',
           'iFormer-M (CC hybrid SHMA)': 'CC Hybrid SHMA'}
    for r in rows:
        table = tables[r['source']]
        if r['source'] == 'Table 17':
            matches = [c for n, c in table.items() if n == t17[r['network']]
                       and c[1] == str(r['resolution'])]
            # Table 17's SHMA has two rows (224 and 512): look them all up
            if not matches:
                with open(PAPER, encoding='utf-8') as f:
                    text = f.read()
                matches = [line.split('\t') for line in text.splitlines()
                           if line.startswith(
                               t17[r['network']] + '\t' +
                               str(r['resolution']) + '\t')]
            assert matches, r['network']
            published = matches[0][2]
        else:
            cells = table[r['network']]
            assert float(cells[1]) == r['params_m'], r['network']
            if r['source'] == 'Table 18':
                assert cells[4] == str(r['resolution']), r['network']
                assert float(cells[2]) == r['gmacs'], r['network']
                published = cells[3]
            else:
                published = cells[2]
        if published == 'Failed':
            assert r['failed'], r['network']
        else:
            assert float(published) == r['latency_ms'], r['network']
    # completeness: every latency row of Tables 5 and 18 is in the CSV
    for source in ('Table 5', 'Table 18'):
        names = {r['network'] for r in rows if r['source'] == source}
        paper = {n for n, c in tables[source].items()
                 if len(c) > 3 and re.match(r'^[\d.]+$', c[1])}
        assert paper == names, paper ^ names


# -------------------------------------------------------------- features
class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        return y + self.dw(y)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 16)

    def forward(self, x):  # 1x3x16x16 -> 48 tokens of 16 channels
        t = x.reshape(1, 48, 16)
        a = torch.softmax(self.q(t) @ t.transpose(1, 2), dim=-1)
        return a @ t


@needs_ct
def test_features_of_a_small_convnet_match_hand_counts():
    from iformer_mm.deploy.predictor.extract import convert_spec
    from iformer_mm.deploy.predictor.features import op_records
    recs = op_records(convert_spec(_ConvNet().eval(), 16))
    # FP32 input/output cast to FP16 around the four PyTorch ops
    assert [r['type'] for r in recs] == ['cast', 'conv', 'relu', 'conv',
                                         'add', 'cast']
    conv, relu, dw, add = recs[1:5]
    assert conv['cls'] == 'conv' and dw['cls'] == 'conv_dw'
    assert conv['macs'] == 8 * 16 * 16 * 3 * 3 * 3      # out x Cin x k x k
    assert dw['macs'] == 8 * 16 * 16 * 3 * 3            # depthwise: Cin/g=1
    fp16_map = 8 * 16 * 16 * 2
    assert conv['bytes_out'] == relu['bytes_out'] == dw['bytes_out'] \
        == fp16_map
    assert conv['bytes_in'] == 3 * 16 * 16 * 2
    assert add['bytes_in'] == 2 * fp16_map
    # weights (8x3x3x3) + bias in FP16, plus a few int32 conv parameters
    assert 8 * 27 * 2 + 16 <= conv['bytes_const'] <= 8 * 27 * 2 + 16 + 64
    s = summarize(recs)
    assert s['total_ops'] == 6 and s['macs'] == 55296 + 18432
    assert s['by_class']['elementwise']['count'] == 4
    assert s['largest_matmul_out_bytes'] == 0 and s['max_rank'] == 4


@needs_ct
def test_features_of_a_small_attention_match_hand_counts():
    from iformer_mm.deploy.predictor.extract import convert_spec
    from iformer_mm.deploy.predictor.features import op_records
    recs = op_records(convert_spec(_Attention().eval(), 16))
    kinds = [r['type'] for r in recs]
    assert kinds.count('matmul') == 2 and kinds.count('linear') == 1
    assert kinds.count('softmax') == 1
    lin = next(r for r in recs if r['type'] == 'linear')
    mm1, mm2 = [r for r in recs if r['type'] == 'matmul']
    assert lin['macs'] == 48 * 16 * 16
    assert mm1['out_shape'] == [1, 48, 48]
    assert mm1['macs'] == 48 * 48 * 16      # q @ k^T contracts 16 channels
    assert mm2['macs'] == 48 * 16 * 48      # attn @ v contracts 48 tokens
    assert mm1['cls'] == mm2['cls'] == 'matmul'   # activation x activation
    s = summarize(recs)
    assert s['largest_matmul_out_bytes'] == 48 * 48 * 2
    assert s['by_class']['linear']['macs'] == 48 * 16 * 16


# ------------------------------------------------------------------- fit
def _features(**by_class_macs_mb):
    """Synthetic features: ``conv=(gmacs, mb)`` per class, plus ops."""
    ops = by_class_macs_mb.pop('ops', 10)
    biggest = by_class_macs_mb.pop('largest', 1000)
    by_class = {c: dict(count=0, macs=0, bytes_in=0, bytes_out=0,
                        bytes_const=0) for c in CLASSES}
    for c, (gmacs, mb) in by_class_macs_mb.items():
        by_class[c].update(macs=int(gmacs * 1e9), bytes_in=int(mb * 1e6),
                           count=1)
    return dict(by_class=by_class, total_ops=ops,
                macs=sum(v['macs'] for v in by_class.values()),
                bytes_in=sum(v['bytes_in'] for v in by_class.values()),
                bytes_out=0, bytes_const=0, largest_tensor_bytes=biggest,
                largest_matmul_out_bytes=biggest, largest_rank5_bytes=0,
                rank5_bytes=0, max_rank=4, rearrange_bytes=0,
                transpose_bytes_over={str(s): 0 for s in TRANSPOSE_SIZES})


def _fixture(n=24, seed=0):
    rng = np.random.default_rng(seed)
    truth = dict(gmacs_conv=0.5, gmacs_conv_dw=3.0, mb_transpose=0.2,
                 ops=0.004, const=0.1)
    rows, feats = [], []
    for i in range(n):
        f = _features(conv=(rng.uniform(0.1, 3), 0),
                      conv_dw=(rng.uniform(0, 0.2), 0),
                      transpose=(0, rng.uniform(0, 10)),
                      ops=int(rng.integers(50, 400)),
                      largest=int(rng.integers(1e5, 1e6)))
        y = sum(c * M.TERMS[t][0](f) for t, c in truth.items())
        rows.append(dict(network=f'net{i}', key=f'net{i}', resolution=224,
                         family=f'fam{i % 6}', latency_ms=y, failed=False,
                         role='fit', source='Table 18'))
        feats.append(f)
    return rows, feats, truth


def test_fit_recovers_known_coefficients_and_stays_non_negative():
    rows, feats, truth = _fixture()
    terms = ('gmacs_conv', 'gmacs_conv_dw', 'gmacs_matmul', 'mb_transpose',
             'ops', 'const')
    params = M.fit(rows, feats, terms)
    # iPhone 13: compute terms never go below the A15 ANE's peak rate; the
    # fixture has no matmul work, so that coefficient sits on its floor
    assert params['floors']['gmacs_matmul'] == pytest.approx(2e9 / 15.8e12
                                                             * 1e3)
    for t in terms:
        assert params['coef'][t] >= 0
        expected = max(truth.get(t, 0.0), params['floors'].get(t, 0.0))
        assert params['coef'][t] == pytest.approx(expected, rel=1e-4,
                                                  abs=1e-6)
    for r, f in zip(rows, feats):
        assert M.predict(params, f) == pytest.approx(r['latency_ms'],
                                                     rel=1e-5)
    # contributions add up to the prediction
    f = feats[0]
    assert sum(M.contributions(params['coef'], f).values()) == \
        pytest.approx(M.predict(params, f))
    # leave-one-family-out on exact data is exact
    err = M.errors(M.leave_one_family_out(rows, feats, terms))
    assert err['max_abs_pct'] < 1e-3 and err['spearman'] > 0.99


def test_compute_floor_binds_only_where_the_device_has_one():
    rows, feats, truth = _fixture()
    slow = 0.01                       # ms per GMAC: faster than the ANE peak
    for r, f in zip(rows, feats):
        r['latency_ms'] += (slow - truth['gmacs_conv']) * \
            M.TERMS['gmacs_conv'][0](f)
    terms = tuple(truth)
    floor = M.IPHONE13_MS_PER_GMAC_FLOOR
    assert M.fit(rows, feats, terms)['coef']['gmacs_conv'] == \
        pytest.approx(floor)
    other = [dict(r, device='Mac mini', role='user') for r in rows]
    assert M.fit(other, feats, terms, device='Mac mini')['coef'][
        'gmacs_conv'] == pytest.approx(slow, rel=1e-4)


def test_failed_rule_thresholds_the_separating_feature():
    rows, feats, _ = _fixture()
    for r, f in list(zip(rows, feats))[:3]:    # three huge attention maps
        f['largest_matmul_out_bytes'] = 5e7
        r['failed'], r['latency_ms'] = True, None
    rule = M.fit_failed_rule(rows, feats)
    assert rule['errors_on_fit'] == 0
    assert rule['feature'] in ('largest_matmul_out_bytes',)
    assert 1e6 < rule['threshold'] < 5e7
    params = M.fit(rows, feats, ('gmacs_conv', 'ops', 'const'))
    assert M.predict(params, feats[0]).failed
    assert not M.predict(params, feats[5]).failed
    err = M.errors([(rows[0], M.Prediction(1.0, True)),
                    (rows[5], M.Prediction(1.0, True)),
                    (rows[6], M.Prediction(rows[6]['latency_ms'] * 2))])
    # a wrong "Failed" is counted, and still scored on its number
    assert (err['failed_right'], err['false_failed'], err['n']) == (1, 1, 2)
    assert err['max_abs_pct'] == pytest.approx(100.0)
    # a rule that leave-one-family-out cannot validate is dropped
    for lofo, kept in ((dict(failed_right=1, failed_total=3,
                             false_failed=0), True),
                       (dict(failed_right=0, failed_total=3,
                             false_failed=0), False),
                       (dict(failed_right=3, failed_total=3,
                             false_failed=1), False)):
        out = M.accept_failed_rule(dict(params), lofo)
        assert (out['failed_rule'] is not None) == kept
        assert ('failed_rule_rejected' in out) != kept


# ---------------------------------------------------------------- no leak
def test_held_out_rows_can_never_be_fitted(rows):
    held = [r for r in rows if r['resolution'] == 512 and
            r['source'] in ('Table 5', 'Table 13')]
    assert len(held) >= 17
    for r in held:
        with pytest.raises(M.LeakError):
            M.check_no_leak([r])
    fit_rows = [r for r in rows if r['role'] == 'fit']
    M.check_no_leak(fit_rows)       # the real fit set passes
    assert {r['source'] for r in fit_rows} == {'Table 17', 'Table 18'}
    rows_, feats, _ = _fixture()
    bad = dict(rows_[0], role='heldout', source='Table 5', resolution=512)
    with pytest.raises(M.LeakError):
        M.fit([bad] + rows_[1:], feats, ('gmacs_conv', 'const'))
    with pytest.raises(M.LeakError):
        M.select_terms([bad] + rows_[1:], feats)


def test_stored_fit_used_no_held_out_row(rows):
    params = M.load_params()
    held = {f'{r["key"]}@{r["resolution"]}' for r in rows
            if r['role'] in ('heldout', 'heldout_alt', 'heldout_extra')}
    fit_ids = {f'{r["key"]}@{r["resolution"]}' for r in rows
               if r['role'] == 'fit'}
    assert params['fit_rows'] and set(params['fit_rows']) <= fit_ids
    assert not set(params['fit_rows']) & held
    assert not any(r.endswith('@512') and not r.startswith('iformer-m-')
                   for r in params['fit_rows'])
    assert params['device'] == D.DEFAULT_DEVICE
    assert all(v >= 0 for v in params['coef'].values())
    assert params['validation']['heldout']['n'] >= 8


# ------------------------------------------------------------ per device
def test_each_device_gets_its_own_fit(tmp_path):
    rows, feats, truth = _fixture()
    other = [dict(r, device='iPhone 15 Pro', role='user',
                  latency_ms=r['latency_ms'] * 0.5) for r in rows]
    mixed_rows, mixed_feats = rows + other, feats + feats
    terms = tuple(truth)
    p13 = M.fit(mixed_rows, mixed_feats, terms)
    p15 = M.fit(mixed_rows, mixed_feats, terms, device='iPhone 15 Pro')
    assert p13['device'] == 'iPhone 13' and p15['device'] == 'iPhone 15 Pro'
    for t in terms:
        assert p15['coef'][t] == pytest.approx(p13['coef'][t] * 0.5,
                                               rel=1e-4, abs=1e-7)
    for absent in ('Pixel 9', 'iPhone 99'):  # sorting before and after
        with pytest.raises(ValueError, match='No measurement rows'):
            M.fit(rows, feats, terms, device=absent)
    path = M.save_params(p15, str(tmp_path / 'p.json'))
    with pytest.raises(ValueError, match='per device'):
        M.load_params('iPhone 13', path=path)
    assert M.load_params('iPhone 15 Pro', path=path)['coef'] == p15['coef']


@pytest.mark.slow
def test_benchmark_rejects_bad_input(tmp_path):
    script = os.path.join(ROOT, 'benchmarks', 'latency_predictor.py')
    proc = subprocess.run([sys.executable, script, 'fit', '--measurements',
                           str(tmp_path / 'missing.csv')],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert 'does not exist' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------- the tool column
def _tool_predictions(tmp_path, names, size, *extra):
    """The latency tool's predicted column for ``names`` (no timing), read
    back from the JSON it writes."""
    from iformer_mm.deploy.benchmark import main
    out = tmp_path / f'run{size}'
    assert main(list(names) + ['--size', str(size), '--no-timing',
                               '--no-onnx', '--no-chart', '--quiet',
                               '--out', str(out), *extra]) == 0
    with open(out / 'latency.json') as f:
        results = json.load(f)['results']
    return {r['key']: r['coreml']['predicted'] for r in results}


@needs_ct
@pytest.mark.parametrize('size,names', [
    (224, ('efficientnet-b0', 'repvit-m1-1')),
    pytest.param(512, ('efficientformer-l1', 'resnet18'),
                 marks=pytest.mark.slow)])
def test_tool_predicts_what_the_validated_path_predicts(
        tmp_path, capsys, rows, shipped_features, size, names):
    """The figure beside a Table 5 peer is the validated path's prediction
    (the reference classifier, converted as the validation converted it),
    and the error printed beside it is the one measured for that path: the
    held-out Table 5 errors at 512x512, leave-one-family-out at a fit
    resolution."""
    from iformer_mm.deploy.predictor.extract import row_id
    params = M.load_params()
    got = _tool_predictions(tmp_path, names, size)
    stored = params['validation']
    network = {r['key']: r['network'] for r in rows}
    for key in names:
        pred = got[key]
        want = M.predict(params, shipped_features[row_id(key, size)][
            'features'])
        assert pred['ms'] == pytest.approx(float(want), rel=1e-6), key
        if size == 512:
            assert pred['ms'] == pytest.approx(
                stored['heldout_rows'][network[key]]['ms'], rel=1e-6)
        scope = 'heldout' if size == 512 else 'lofo'
        assert pred['validation']['scope'] == scope
        assert pred['validation']['max_abs_pct'] == \
            stored[scope]['max_abs_pct']
    table = capsys.readouterr().out
    assert f"{stored[scope]['max_abs_pct']:.0f}% max" in table


def test_why_a_reference_network_is_not_validated():
    """Fitted networks (and every iFormer) have no reason; one excluded
    from the fit gives the reason recorded when its features were built,
    at one size or several."""
    from iformer_mm.deploy.predictor import excluded_reason
    assert excluded_reason('resnet18') is None
    assert excluded_reason('iformer-m') is None
    for key in ('mnv4-conv-m', 'fastvit-sa12'):  # one row, two rows
        why = excluded_reason(key)
        assert why.startswith('its reference network was excluded')
        assert 'M parameters, published' in why


def test_only_the_validated_path_carries_a_measured_error():
    """A dense backbone, a network outside the reference set, another
    conversion or an unvalidated size get "not validated", never another
    path's error; the cell shows which error it carries."""
    from iformer_mm.deploy.predictor import Program, validation_for
    from iformer_mm.deploy.report import predicted_cell
    params = M.load_params()
    val = params['validation']
    ok = Program('classifier', None, (512, 512))
    assert validation_for(params, ok)['max_abs_pct'] == \
        val['heldout']['max_abs_pct']
    assert validation_for(params, Program('classifier', None, (224, 224))
                          )['median_abs_pct'] == val['lofo']['median_abs_pct']
    for program in (Program('dense', None, (512, 512), outputs=4),
                    Program('classifier', 'parameters differ', (512, 512)),
                    Program('classifier', None, (512, 512), precision='fp32'),
                    Program('classifier', None, (512, 512), ios_target='iOS16'),
                    Program('classifier', None, (512, 512),
                            input_type='image'),
                    Program('classifier', None, (640, 640)),
                    Program('classifier', None, (224, 448))):
        v = validation_for(params, program)
        assert v['scope'] is None
        cell = predicted_cell(dict(status='predicted', ms=4.2, failed=False,
                                   validation=v))
        assert 'not validated for this kind of network' in cell
        assert '%' not in cell
    cell = predicted_cell(dict(status='predicted', ms=4.2, failed=False,
                               validation=validation_for(params, ok)))
    assert cell.startswith('4.20 (predicted;')
    assert f"{val['heldout']['median_abs_pct']:.0f}% median" in cell
    assert predicted_cell(dict(status='predicted', ms=4.2, failed=True,
                               validation=v)).startswith('Failed')
    assert predicted_cell(None) == '–'
    assert 'no prediction' in predicted_cell(dict(status='unavailable',
                                                  error='boom'))


@needs_ct
def test_dense_program_and_classifier_only_peers(tmp_path, capsys):
    """``--program dense`` converts the four-output backbone and says its
    prediction is not validated; a peer that exists only as a classifier
    is skipped there with a line, and the run exits 0."""
    from iformer_mm.deploy.benchmark import main
    out = tmp_path / 'dense'
    assert main(['iformer-t', 'repvit-m1-1', '--program', 'dense',
                 '--size', '64', '--no-timing', '--no-onnx', '--no-chart',
                 '--quiet', '--out', str(out)]) == 0
    text = capsys.readouterr().out
    with open(out / 'latency.json') as f:
        results = {r['key']: r for r in json.load(f)['results']}
    dense = results['iformer-t:cc-hybrid']
    assert len(dense['output_shapes']) == 4
    assert dense['program']['kind'] == 'dense'
    assert dense['coreml']['predicted']['validation']['scope'] is None
    assert results['repvit-m1-1']['status'] == 'skipped'
    assert 'skipped RepViT-M1.1' in text
    assert 'not validated for this kind of network' in text


def test_a_device_without_fitted_parameters_is_one_line(tmp_path, capsys):
    from iformer_mm.deploy.benchmark import main
    for flags in (['--device', 'iPhone 99', '--device-team', 'ABCDE12345'],
                  ['--predict-device', 'iPhone 99']):
        rc = main(['iformer-t', '--size', '64', *flags, '--no-timing',
                   '--quiet', '--out', str(tmp_path / 'x')])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1
        assert 'iPhone 99' in err
    assert not (tmp_path / 'x').exists()


def _scores(median, mx, rho):
    return dict(median_abs_pct=median, max_abs_pct=mx, spearman=rho)


def test_the_summary_names_a_proxy_that_beats_the_predictor():
    from iformer_mm.deploy.predictor import (PREDICTOR, proxy_verdict,
                                             rank_methods)
    methods = {PREDICTOR: _scores(26, 270, 0.73),
               'ONNX Runtime CPU': _scores(20, 73, 0.84),
               'PyTorch eager CPU': _scores(40, 300, 0.2)}
    assert rank_methods(methods) == ['ONNX Runtime CPU', PREDICTOR,
                                     'PyTorch eager CPU']
    line = proxy_verdict(dict(validation=dict(proxies=methods)))
    assert 'ONNX Runtime CPU beats the predictor' in line
    assert 'PyTorch eager CPU beats' not in line
    assert line.index('ONNX Runtime CPU') < line.index(PREDICTOR)
    # one score better is not enough to rank first, but it is said
    methods['ONNX Runtime CPU'] = _scores(30, 73, 0.5)
    assert rank_methods(methods)[0] == PREDICTOR
    assert 'ONNX Runtime CPU beats the predictor on max error' in \
        proxy_verdict(dict(validation=dict(proxies=methods)))
    methods['ONNX Runtime CPU'] = _scores(30, 300, 0.5)
    assert 'beats every proxy' in proxy_verdict(
        dict(validation=dict(proxies=methods)))
    assert proxy_verdict(dict(validation={})) is None
    # a higher Spearman is better: with the lower median error it outranks
    # a method whose only win is the max error
    methods = {PREDICTOR: _scores(30, 100, 0.5), 'X': _scores(20, 300, 0.9)}
    assert rank_methods(methods) == ['X', PREDICTOR]
    verdict = proxy_verdict(dict(validation=dict(proxies=methods)))
    assert 'X beats the predictor on' in verdict
    assert 'Spearman.' in verdict.split('X beats the predictor on')[1]


@needs_ct
def test_tool_prediction_uses_the_stored_fit():
    from iformer_mm.deploy.predictor.extract import convert_spec
    from iformer_mm.deploy.predictor import Program, predict_for_tool
    from iformer_mm.deploy.predictor.features import program_features
    from iformer_mm.deploy.report import predicted_cell
    spec = convert_spec(_ConvNet().eval(), 16)
    program = Program('dense', None, (16, 16), outputs=1)
    pred = predict_for_tool(spec, program)
    params = M.load_params()
    assert pred['status'] == 'predicted'
    assert pred['ms'] == pytest.approx(
        M.predict_ms(params['coef'], program_features(spec)))
    assert predict_for_tool(object(), program)['status'] == 'unavailable'

    class Broken:
        def get_spec(self):
            raise RuntimeError('x' * 500)
    assert predicted_cell(dict(error='no spec')) == 'no prediction (no spec)'
    failed = predict_for_tool(Broken(), program)
    # the error names what failed and, as it goes into a JSON report and a
    # table cell, is kept short
    assert failed['status'] == 'unavailable'
    assert failed['error'].startswith('RuntimeError: xxx')
    assert len(failed['error']) <= 200


class _UpAndRank5(nn.Module):
    """A transposed conv (decoder-style upsampling) and a rank-5 view."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 6, 2, stride=2)

    def forward(self, x):
        y = self.up(x)                          # 1 x 6 x 16 x 16
        z = y.view(1, 2, 3, 16, 16) * 2.0       # rank 5
        return z.sum(1)                         # rank 4 again


@needs_ct
def test_features_of_transposed_conv_and_rank5_tensors():
    from iformer_mm.deploy.predictor.extract import convert_spec
    from iformer_mm.deploy.predictor.features import op_records
    recs = op_records(convert_spec(_UpAndRank5().eval(), 8))
    (up, ) = [r for r in recs if r['type'] == 'conv_transpose']
    # every input pixel meets every (Cout/g) x k x k weight once
    assert up["macs"] == (3 * 8 * 8) * (6 * 2 * 2)
    s = summarize(recs)
    assert s['max_rank'] == 5
    rank5 = [r for r in recs if r['out_shape'] is not None
             and len(r['out_shape']) == 5]
    assert rank5, [r['type'] for r in recs]
    assert s['rank5_bytes'] == sum(r['bytes_out'] for r in rank5) > 0
    assert s['largest_rank5_bytes'] == max(r['out_bytes'] for r in rank5)
    ranks = [len(r['out_shape']) for r in recs if r['out_shape'] is not None]
    assert 4 in ranks  # rank-4 tensors do not count as rank 5
    # data movement: the reshapes' outputs, nothing of the compute ops
    moved = sum(r['bytes_out'] for r in recs
                if r['type'] in ('reshape', 'transpose', 'concat', 'split'))
    assert s['rearrange_bytes'] == moved
    assert 0 < moved < s['bytes_out']


class _GramMatrix(nn.Module):
    def forward(self, x):
        q = x.flatten(2)                            # 1 x 3 x 256
        return torch.matmul(q.transpose(1, 2), q)   # (256 x 3) @ (3 x 256)


@needs_ct
def test_matmul_macs_follow_its_transpose_flag():
    """coremltools folds the transpose into ``matmul(transpose_x=True)``:
    the contracted size is then the second-to-last axis of x (the flag is
    an immediate value of the op, read from the program)."""
    from iformer_mm.deploy.predictor.extract import convert_spec
    from iformer_mm.deploy.predictor.features import op_records
    recs = op_records(convert_spec(_GramMatrix().eval(), 16))
    (mm, ) = [r for r in recs if r['type'] == 'matmul']
    assert mm['out_shape'] == [1, 256, 256]
    assert mm['macs'] == 256 * 256 * 3


def test_efficientformer_reference_gets_the_attention_grid_of_its_size():
    """timm fixes EfficientFormer's last-stage bias table at 7 x 7 (224 px);
    at 512 px the reference is rebuilt with a 16 x 16 grid and runs."""
    from iformer_mm.deploy.predictor.references import build_reference
    model, info = build_reference('efficientformer-l1', 512)
    assert info['kwargs']['attention_grid'] == 16
    biased = [m for m in model.modules() if hasattr(m, 'attention_biases')]
    assert biased
    for m in biased:
        assert m.attention_biases.shape[1] == 16 * 16
        assert m.attention_bias_idxs.shape == (256, 256)
        assert m.attention_bias_idxs.dtype == torch.long
        assert int(m.attention_bias_idxs.max()) == 15 * 16 + 15
        # timm's layout: the bias of tokens (y, x) and (y', x') sits at
        # |y - y'| * grid + |x - x'|
        idxs = m.attention_bias_idxs
        assert (int(idxs[0, 1]), int(idxs[0, 16]), int(idxs[17, 0])) == \
            (1, 16, 17)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 512, 512))
    assert out.shape == (1, 1000)


def test_failed_rule_counts_errors_where_no_threshold_separates(
        monkeypatch):
    """Failed at 10 and 30, ran at 0, 2 and 20: each candidate threshold
    misclassifies one row; the tie goes to the widest margin (between 2 and
    10, not 20 and 30), and a zero value is never a threshold's end."""
    monkeypatch.setattr(M, 'FAILED_FEATURES', ('largest_tensor_bytes', ))
    values = [(10, True), (30, True), (0, False), (2, False), (20, False)]
    rows = [dict(failed=failed) for _, failed in values]
    feats = [dict(largest_tensor_bytes=v) for v, _ in values]
    rule = M.fit_failed_rule(rows, feats)
    assert rule['feature'] == 'largest_tensor_bytes'
    assert rule['errors_on_fit'] == 1
    assert rule['threshold'] == pytest.approx((2 * 10) ** 0.5)
    assert rule['margin'] == pytest.approx(5.0)
    assert (rule['failed_on_fit'], rule['ran_on_fit']) == (2, 3)
    assert M.fit_failed_rule([dict(failed=False)] * 2, feats[:2]) is None


def test_parameter_check_reports_both_counts_of_a_reparameterised_net():
    from iformer_mm.deploy.predictor.references import check_params
    assert check_params(4_000_000, 4.0) is None
    assert check_params(4_500_000, 4.0, deployed=4_020_000) is None
    why = check_params(5_000_000, 4.0, deployed=4_500_000)
    assert why.startswith('built / reparameterised network has 5.00 / 4.50 '
                          'M parameters, published 4.0 M (+25.0%, +12.5%')
    why = check_params(5_000_000, 4.0, deployed=5_000_000)
    assert why.startswith('built network has 5.00 M parameters')
    # counts in millions, to the nearest 10 000 parameters
    assert '24.01 M parameters' in check_params(24_005_010, 20.0)
    assert '24.00 M parameters' in check_params(24_004_990, 20.0)


@needs_ct
def test_extract_all_keeps_exclusions_and_reuses_converted_programs(
        tmp_path, monkeypatch):
    """The batch driver: one row per (key, resolution), excluded rows say
    why (no reference, parameter mismatch, failed conversion), converted
    programs are cached and reused, ``only`` adds to the stored rows."""
    from iformer_mm.deploy.predictor import extract as E
    from iformer_mm.deploy.predictor.data import COLUMNS
    csv_path = tmp_path / 'm.csv'
    table = [  # network, key, resolution, params_m
        ('Tiny', 'tiny', 16, 0.000312), ('Tiny', 'tiny', 16, 0.000312),
        ('Tiny', 'tiny', 8, 0.000312), ('Gone', 'gone', 16, 1.0),
        ('Fat', 'fat', 16, 9.0), ('Broken', 'broken', 16, 0.000312)]
    with open(csv_path, 'w', newline='') as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for name, key, res, params in table:
            w.writerow(dict(network=name, key=key, family=key,
                            resolution=res, params_m=params, gmacs='',
                            latency_ms='1.0', source='test', role='fit',
                            note=''))

    def build(key, res):
        if key == 'gone':
            raise KeyError(f'{key}: no reference network is mapped')
        model = _ConvNet().eval()
        n = sum(p.numel() for p in model.parameters())  # 312
        return model, dict(params=n, params_deployed=None)
    converted = []
    real_convert = E.convert_spec

    def convert(model, res):
        converted.append(res)
        if getattr(model, 'broken', False):
            raise RuntimeError('boom')
        return real_convert(model, res)

    def build_maybe_broken(key, res):
        model, info = build(key, res)
        model.broken = key == 'broken'
        return model, info
    monkeypatch.setattr(E, 'build_reference', build_maybe_broken)
    monkeypatch.setattr(E, 'convert_spec', convert)
    out, cache, lines = tmp_path / 'f.json', tmp_path / 'specs', []
    result = E.extract_all(str(cache), str(out), str(csv_path),
                           log=lines.append)
    assert sorted(result) == ['broken@16', 'fat@16', 'gone@16', 'tiny@16',
                              'tiny@8']
    assert [ln.split(':')[0] for ln in lines] == [
        '[1/5] tiny@8', '[2/5] broken@16', '[3/5] fat@16', '[4/5] gone@16',
        '[5/5] tiny@16']  # small resolutions first
    assert result['gone@16'] == dict(key='gone', resolution=16,
                                     status='excluded',
                                     reason='no reference network is mapped')
    assert result['fat@16']['status'] == 'excluded'
    assert result['fat@16']['reason'].startswith('built network has 0.00 M')
    assert result['broken@16']['reason'] == \
        'Core ML conversion failed: RuntimeError: boom'
    tiny = result['tiny@16']
    assert tiny['status'] == 'ok' and tiny['features']['macs'] == \
        8 * 16 * 16 * 27 + 8 * 16 * 16 * 9
    assert result['tiny@8']['features']['macs'] == 8 * 8 * 8 * 36
    assert sorted(converted) == [8, 16, 16]  # tiny twice, broken once
    stored = json.loads(out.read_text())
    assert stored['rows'] == json.loads(json.dumps(result))
    # written with sorted keys: a re-extraction diffs only where it changed
    orders = []
    json.loads(out.read_text(), object_pairs_hook=lambda pairs: orders.append(
        [k for k, _ in pairs]) or dict(pairs))
    assert len(orders) > 10 and all(o == sorted(o) for o in orders)
    assert stored['feature_version'] == E.F.FEATURE_VERSION
    assert sorted(os.listdir(cache)) == ['tiny@16.pb', 'tiny@8.pb']
    # again, for one row: its cached program is read, the others are kept
    converted.clear()
    again = E.extract_all(str(cache), str(out), str(csv_path),
                          only=['tiny@16'], log=lines.append)
    assert converted == [] and again['tiny@16']['features'] == \
        tiny['features']
    assert sorted(again) == sorted(result)
    E.extract_all(str(cache), str(out), str(csv_path), only=['tiny@8'],
                  reconvert=True, log=lines.append)
    assert converted == [8]


def _undeployed_twin(monkeypatch, key, resolution):
    """The network ``build_reference`` makes for ``key``, left as built:
    same seed, constructor and arguments, without deploy()."""
    from iformer_mm.deploy.predictor import references
    with monkeypatch.context() as patch:
        patch.setattr(references, 'deploy', lambda model: 'eval mode')
        model, _ = references.build_reference(key, resolution)
    return model


def test_iformer_reference_is_the_papers_classifier_deployed(monkeypatch):
    """iFormer-T: the published 2.9 M parameters before deploy, fewer after
    (reparameterised), the same outputs; at 512 the dense hybrid SHMA."""
    from iformer_mm.deploy.predictor.references import (
        IFORMER_DENSE_DEFAULT, build_reference, check_params)
    model, info = build_reference('iformer-t', 224)
    assert info['library'] == 'iformer_mm' and info['model'] == 't'
    assert check_params(info['params'], 2.9) is None
    assert info['params_deployed'] < info['params']
    # the network's own switch_to_deploy, once (it folds every block)
    assert info['deploy'] == 'switch_to_deploy'
    twin = _undeployed_twin(monkeypatch, 'iformer-t', 224)
    assert sum(p.numel() for p in twin.parameters()) == info['params']
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), twin(x), atol=1e-3, rtol=1e-3)
    _, dense = build_reference('iformer-t', 512)
    assert dense['kwargs'] == IFORMER_DENSE_DEFAULT
    _, m_global = build_reference('iformer-m', 512)  # its own choice wins
    assert m_global['kwargs'] == dict(attention='global')
    assert info['version'] == __import__('iformer_mm').__version__


def test_timm_reparameterisation_keeps_outputs_and_counts_both(monkeypatch):
    import timm
    from iformer_mm.deploy.predictor.references import build_reference
    model, info = build_reference('mobileone-s2', 64)
    assert info['deploy'] == 'timm reparameterize_model'
    assert info['params_deployed'] < info['params']
    twin = _undeployed_twin(monkeypatch, 'mobileone-s2', 64)
    assert sum(p.numel() for p in twin.parameters()) == info['params']
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), twin(x), atol=1e-3, rtol=1e-3)
    assert info['version'] == timm.__version__


def test_user_keys_name_a_library_model_and_unknown_keys_say_why():
    import torchvision
    from iformer_mm.deploy.predictor.references import (UNAVAILABLE,
                                                        build_reference,
                                                        reference_for)
    model, info = build_reference('torchvision:mobilenet_v3_small', 32)
    assert info['params'] == sum(
        p.numel() for p in torchvision.models.mobilenet_v3_small().
        parameters())
    assert info['deploy'] == 'eval mode' and not model.training
    assert info['version'] == torchvision.__version__
    assert reference_for('timm:resnet18').name == 'resnet18'
    for bad in ('nonsense', 'timm:', 'keras:resnet'):
        with pytest.raises(KeyError, match='no reference network is mapped'):
            reference_for(bad)
    key = next(iter(UNAVAILABLE))
    with pytest.raises(KeyError) as err:
        reference_for(key)
    assert UNAVAILABLE[key] in str(err.value)


def test_every_term_reads_its_feature_in_its_unit():
    """Each cost-model term against its definition, on features whose
    numbers are all different: GMACs are MACs / 1e9, MB are bytes / 1e6."""
    f = _features(conv=(1.5, 2.0), conv_dw=(0.25, 3.0), linear=(0.5, 4.0),
                  matmul=(0.125, 5.0), elementwise=(0, 6.0),
                  transpose=(0, 7.0), rearrange=(0, 8.0), ops=321)
    f.update(bytes_in=10_000_000, bytes_out=20_000_000, bytes_const=4_000_000,
             rank5_bytes=3_000_000,
             transpose_bytes_over={str(s): (i + 1) * 1_000_000
                                   for i, s in enumerate(TRANSPOSE_SIZES)})
    value = {t: fn(f) for t, (fn, _) in M.TERMS.items()}
    assert value['gmacs_conv'] == pytest.approx(1.5)
    assert value['gmacs_conv_dw'] == pytest.approx(0.25)
    assert value['gmacs_all'] == pytest.approx(1.5 + 0.25 + 0.5 + 0.125)
    assert value['mb_conv'] == pytest.approx(2.0)
    assert value['mb_transpose'] == pytest.approx(7.0)
    assert value['mb_memory'] == pytest.approx(6.0 + 8.0)
    assert value['mb_all'] == pytest.approx(30.0)
    assert value['mb_weights'] == pytest.approx(4.0)
    assert value['mb_rank5'] == pytest.approx(3.0)
    for i, size in enumerate(TRANSPOSE_SIZES):
        assert value[f'mb_transpose_over_{size // 1024}k'] == \
            pytest.approx(i + 1)
    assert value['ops'] == 321.0 and value['const'] == 1.0
    units = {t: unit for t, (_, unit) in M.TERMS.items()}
    assert {u for t, u in units.items() if t.startswith('gmacs')} == \
        {'ms/GMAC'}
    assert {u for t, u in units.items() if t.startswith('mb_')} == {'ms/MB'}
    # a prediction is not "Failed" unless the rule says so
    assert M.Prediction(2.0).failed is False
    assert M.Prediction(2.0, failed=1).failed is True


def test_deploy_folds_a_reparameterisable_network_without_changing_it(
        shipped_features):
    """GhostNetV3 has 48 modules with switch_to_deploy: deploy() switches the
    first and timm's reparameterize_model folds the rest; the deployed
    network computes what the trained one does (BN statistics away from
    1/0, so that a fold that forgot them would show), has fewer
    parameters, and is described as recorded in the shipped feature file."""
    import copy

    import timm

    from iformer_mm.deploy.predictor.references import deploy
    torch.manual_seed(0)
    model = timm.create_model('ghostnetv3_100', pretrained=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    deployed = copy.deepcopy(model)
    note = deploy(deployed)
    with torch.no_grad():
        got = deployed(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert not deployed.training
    # as recorded when the shipped features were extracted
    recorded = shipped_features['ghostnetv3-1-0x@224']['reference']
    assert note == recorded['deploy'] == \
        'switch_to_deploy, timm reparameterize_model'
    assert sum(p.numel() for p in model.parameters()) == recorded['params']
    assert sum(p.numel() for p in deployed.parameters()) == \
        recorded['params_deployed'] < recorded['params']


def _rec(kind, cls, out_shape, out_bytes, macs=0, bytes_in=0, const=0):
    return dict(type=kind, cls=cls, out_shape=out_shape, out_bytes=out_bytes,
                macs=macs, bytes_in=bytes_in, bytes_out=out_bytes,
                bytes_const=const)


def test_summary_of_hand_made_records():
    """summarize() against sums done by hand: per type and class from zero,
    transposes by output size strictly over 64 KiB / 256 KiB / 1 MiB (the
    buckets the fitted coefficients were learned on), the extremes."""
    kib = 1024
    recs = [
        _rec('transpose', 'transpose', [1, 64, 32, 16], 64 * kib, 0, 64 * kib),
        _rec('transpose', 'transpose', [1, 2, 3, 4], 64 * kib + 2, 0, 10),
        _rec('transpose', 'transpose', [1, 2, 3, 4], 256 * kib + 2, 0, 20),
        _rec('transpose', 'transpose', [1, 2, 3, 4], 1024 * kib + 2, 0, 30),
        _rec('matmul', 'matmul', [1, 8, 8], 5000, macs=700, bytes_in=40),
        _rec('reshape', 'rearrange', [1, 2, 3, 4, 5], 7000, bytes_in=7000),
        _rec('conv', 'conv', [1, 8, 4, 4], 300, macs=11, bytes_in=3,
             const=99),
        _rec('conv', 'conv_dw', [1, 8, 4, 4], 300, macs=2, bytes_in=300,
             const=7),
        _rec('const', 'other', None, 0),
    ]
    s = summarize(recs)
    assert s['transpose_bytes_over'] == {
        str(64 * kib): (64 * kib + 2 + 10) + (256 * kib + 2 + 20) +
        (1024 * kib + 2 + 30),
        str(256 * kib): (256 * kib + 2 + 20) + (1024 * kib + 2 + 30),
        str(1024 * kib): 1024 * kib + 2 + 30}
    assert s['by_type']['transpose'] == dict(
        count=4, macs=0, bytes_in=64 * kib + 60,
        bytes_out=64 * kib * 2 + 256 * kib + 1024 * kib + 6, bytes_const=0)
    assert s['by_type']['conv'] == dict(count=2, macs=13, bytes_in=303,
                                        bytes_out=600, bytes_const=106)
    assert s['by_class']['conv_dw'] == dict(count=1, macs=2, bytes_in=300,
                                            bytes_out=300, bytes_const=7)
    assert sorted(s['by_type']) == ['const', 'conv', 'matmul', 'reshape',
                                    'transpose']
    assert all(v == dict(count=0, macs=0, bytes_in=0, bytes_out=0,
                         bytes_const=0)
               for c, v in s['by_class'].items()
               if c not in ('transpose', 'matmul', 'rearrange', 'conv',
                            'conv_dw', 'other'))
    assert s['total_ops'] == 9 and s['macs'] == 713
    assert s['bytes_const'] == 106
    assert s['largest_tensor_bytes'] == 1024 * kib + 2
    assert s['largest_matmul_out_bytes'] == 5000
    assert s['largest_rank5_bytes'] == s['rank5_bytes'] == 7000
    assert s['max_rank'] == 5
    # reshape and transpose move bytes; matmul and conv do not
    assert s['rearrange_bytes'] == 7000 + 64 * kib * 2 + 256 * kib + \
        1024 * kib + 6


def test_rank_correlation_needs_three_rows():
    rows = [dict(network=f'n{i}', latency_ms=float(i + 1), failed=False)
            for i in range(3)]
    assert M.errors(zip(rows[:2], [1.0, 2.0]))['spearman'] is None
    three = M.errors(zip(rows, [1.0, 3.0, 2.0]))
    assert three['spearman'] == pytest.approx(0.5)
    assert three['n'] == 3 and three['worst'] == 'n1'


def test_plain_numbers_are_scored_and_never_say_failed():
    """A baseline's predictions (a proxy's scaled times) are plain numbers:
    scored like any prediction, and never a "Failed" flag, right or wrong."""
    rows = [dict(network=f'n{i}', latency_ms=float(i + 1), failed=False)
            for i in range(3)] + [dict(network='f', latency_ms=None,
                                       failed=True)]
    err = M.errors(zip(rows, [1.0, 2.0, 3.0, 9.0]))
    assert (err['n'], err['max_abs_pct'], err['failed_total']) == (3, 0, 1)
    assert (err['failed_right'], err['false_failed']) == (0, 0)


def test_relative_least_squares_keeps_coefficients_above_the_floor():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    y = x @ np.array([2.0, 0.5])
    assert M.nnls_relative(x, y) == pytest.approx([2.0, 0.5])  # floor 0
    assert M.nnls_relative(x, y, np.array([0.0, 1.0]))[1] == \
        pytest.approx(1.0)
    # a negative truth is clamped to the default floor of 0
    assert M.nnls_relative(x, x @ np.array([2.0, -0.5]))[1] == \
        pytest.approx(0.0, abs=1e-12)


def test_a_fit_needs_as_many_timed_rows_as_terms():
    rows, feats, _ = _fixture(n=8)
    terms = ('gmacs_conv', 'gmacs_conv_dw', 'mb_transpose', 'ops', 'const')
    for r in rows[5:]:
        r['failed'] = True  # 5 timed rows: just enough
    M.fit(rows, feats, terms, check_leak=False)
    rows[4]['failed'] = True
    with pytest.raises(ValueError, match='4 timed rows cannot fit 5 terms'):
        M.fit(rows, feats, terms, check_leak=False)


def test_iformer_references_have_the_layouts_of_table_16():
    """Table 16's rows at 512: global SHMA, hybrid SHMA without channel
    chunking, and channel-chunked hybrid SHMA (16 chunks); other iFormer rows
    at dense sizes (above 256) get the chunked hybrid layout, and at 256 and
    below the classification network's global attention."""
    from iformer_mm.deploy.predictor.references import build_reference

    def stage3(key, resolution):
        model, info = build_reference(key, resolution)
        return None, model.backbone.stages[2].window_chunks, info['kwargs']
    _, chunks, kwargs = stage3('iformer-m-hybrid-shma', 512)
    assert (chunks, kwargs) == (1, dict(attention='hybrid', window_chunks=1))
    _, chunks, kwargs = stage3('iformer-m-cc-hybrid-shma', 512)
    assert (chunks, kwargs) == (16, dict(attention='hybrid',
                                         window_chunks=16))
    assert stage3('iformer-m-global-shma', 512)[2] == dict(attention='global')
    assert stage3('iformer-t', 512)[2] == dict(attention='hybrid',
                                               window_chunks=16)
    assert stage3('iformer-t', 256)[2] == {}
    assert stage3('iformer-t', 257)[2] == dict(attention='hybrid',
                                               window_chunks=16)


def test_shipped_coefficients_are_the_fit_of_the_shipped_data(
        rows, shipped_features):
    """Every predicted latency the tools print comes from the stored
    coefficients: refitting the stored fit rows (their shipped features and
    published latencies) with the stored terms gives them back."""
    from iformer_mm.deploy.predictor.extract import row_id
    params = M.load_params()
    features = shipped_features
    by_id = {row_id(r['key'], r['resolution']): r for r in rows}
    ids = params['fit_rows']
    refit = M.fit([by_id[i] for i in ids],
                  [features[i]['features'] for i in ids], params['terms'],
                  device=params['device'])
    assert refit['fit_rows'] == ids
    assert refit['floors'] == pytest.approx(params['floors'], rel=1e-12)
    assert refit['coef'] == pytest.approx(params['coef'], rel=1e-9,
                                          abs=1e-12)


def assert_same_summary(got, want, where='summary'):
    """``got`` equals the stored ``want``: floats within 1e-9 (relative),
    everything else (names, counts, None, keys) exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for key in want:
            assert_same_summary(got[key], want[key], f'{where}.{key}')
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=1e-9), where
    else:
        assert got == want and type(got) is type(want), where


def test_stored_validation_is_what_the_shipped_data_gives(
        rows, shipped_features):
    """docs/benchmarks.md and the latency tools quote the stored validation
    (term set chosen by leave-one-family-out, its errors, the held-out
    Table 5 errors): recomputed here from the shipped features and
    measurements."""
    from iformer_mm.deploy.predictor.extract import row_id
    params = M.load_params()
    stored = params['validation']
    features = shipped_features
    by_id = {row_id(r['key'], r['resolution']): r for r in rows}
    fit_rows = [by_id[i] for i in params['fit_rows']]
    fit_feats = [features[i]['features'] for i in params['fit_rows']]
    best, scores = M.select_terms(fit_rows, fit_feats,
                                  device=params['device'])
    assert best == params['term_set']
    assert M.TERM_SETS[best] == tuple(params['terms'])
    assert set(scores) == set(stored['term_set_scores'])
    assert_same_summary(scores, stored['term_set_scores'],
                        'term_set_scores')
    lofo = M.leave_one_family_out(fit_rows, fit_feats, M.TERM_SETS[best],
                                  params['device'])
    assert_same_summary(M.errors(lofo), stored['lofo'], 'lofo')
    held = [r for r in rows if r['role'] == 'heldout' and
            features.get(row_id(r['key'], r['resolution']), {}).get(
                'status') == 'ok']
    pairs = [(r, M.predict(params, features[row_id(
        r['key'], r['resolution'])]['features'])) for r in held]
    assert_same_summary(M.errors(pairs), stored['heldout'], 'heldout')
    assert {r['network']: float(p) for r, p in pairs} == pytest.approx(
        {k: v['ms'] for k, v in stored['heldout_rows'].items()}, rel=1e-9)


def test_term_choice_prefers_lower_error_then_fewer_terms():
    rows, feats, truth = _fixture()
    terms = tuple(truth)
    # gmacs_matmul is zero in every fixture row: the same fit, one term more
    more = terms + ('gmacs_matmul', )
    poor = ('gmacs_conv', 'const')
    for candidates in (dict(more=more, exact=terms, poor=poor),
                       dict(exact=terms, more=more, poor=poor)):
        best, scores = M.select_terms(rows, feats, candidates)
        assert scores['more']['median_abs_pct'] == \
            scores['exact']['median_abs_pct']
        assert scores['poor']['median_abs_pct'] > 1.0
        assert best == 'exact'


@needs_ct
def test_constants_of_every_length_are_read():
    """A program's constants are read whatever their length: one value as a
    scalar (a matmul's transpose flag decides which axis it contracts), two
    values (reduction axes) and none (the shape of a scalar reshape)."""
    from iformer_mm.deploy.coreml import import_coremltools
    from iformer_mm.deploy.predictor.features import op_records
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8)),
                             mb.TensorSpec(shape=(1, 4, 6))],
                opset_version=ct.target.iOS16)
    def prog(x, y):
        a = mb.matmul(x=x, y=y, transpose_x=True)     # 1x8x6, contracts 4
        b = mb.matmul(x=a, y=a, transpose_y=True)     # 1x8x8, contracts 6
        s = mb.reduce_sum(x=b, axes=[1, 2], keep_dims=True)
        return mb.reshape(x=s, shape=np.zeros((0, ), np.int32))

    spec = ct.convert(prog, convert_to='mlprogram',
                      pass_pipeline=ct.PassPipeline.EMPTY,
                      minimum_deployment_target=ct.target.iOS16,
                      skip_model_load=True).get_spec()
    recs = op_records(spec)
    assert [r['type'] for r in recs] == ['matmul', 'matmul', 'reduce_sum',
                                         'reshape']
    assert [r['macs'] for r in recs[:2]] == [8 * 6 * 4, 8 * 8 * 6]
    assert recs[3]['out_shape'] == []


class _Aliased(nn.Module):
    def forward(self, x):
        return torch.ops.aten.alias(x) * 2


@needs_ct
def test_aten_alias_converts_as_an_identity():
    """coremltools 9.0 has no converter for aten.alias (timm's GhostNetV3
    emits it): convert_spec registers one, so that such networks convert,
    and registering it again for the next network is harmless."""
    from iformer_mm.deploy.predictor.extract import convert_spec
    from iformer_mm.deploy.predictor.features import op_records
    for _ in range(2):
        types = [r['type'] for r in op_records(convert_spec(_Aliased(), 8))]
        assert 'mul' in types and 'identity' not in types
