"""Every published iPhone 13 figure the latency tool prints, read back from
the paper's text (Tables 5, 13, 17, 18, kept verbatim in
``tests/data/iformer_paper_tables.md``), and shown only beside the network
and input size it belongs to."""
import os
import re

import pytest

from iformer_mm.deploy.backbones import (PUBLISHED_LATENCIES,
                                         published_latencies,
                                         resolve_backbone)

PAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                     'iformer_paper_tables.md')


def _cells(line):
    return [re.sub(r'<[^>]+>', '', c).strip() for c in line.split('\t')]


def paper_table(number):
    """(caption, rows) of Table ``number``: rows are the tab-separated lines
    after the caption, up to the next caption, tags stripped."""
    with open(PAPER, encoding='utf-8') as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith(f'Table {number}:'))
    rows = []
    for line in lines[start + 1:]:
        if re.match(r'Table \d+:', line):
            break
        if '\t' in line:
            rows.append(_cells(line))
    return lines[start], rows


def _row(rows, label):
    """The row whose first cell is ``label`` (a year in brackets may
    follow, as in "ResNet18 (2016)")."""
    found = [r for r in rows
             if re.sub(r'\s*\(.*\)$', '', r[0]) == label]
    assert len(found) >= 1, f'no row {label!r}'
    return found


PAPER_FIGURES = [f for f in PUBLISHED_LATENCIES if f.table is not None]


@pytest.mark.parametrize('figure', PAPER_FIGURES,
                         ids=[f'{f.key}@{f.size[0]}-T{f.table}'
                              for f in PAPER_FIGURES])
def test_paper_figure_is_in_the_paper(figure):
    caption, rows = paper_table(figure.table)
    candidates = _row(rows, figure.row)
    expected = 'Failed' if figure.ms is None else None
    if figure.table == 17:
        # Attention | Resolution | Latency: the resolution is in the row.
        candidates = [r for r in candidates
                      if r[1] == str(figure.size[0])]
        assert len(candidates) == 1
        cell = candidates[0][2]
    elif figure.table == 18:
        # Model | Params | GMACs | Latency | Reso. | ...
        (row, ) = candidates
        assert row[4] == str(figure.size[0])
        cell = row[figure.column]
    else:
        # Tables 5 and 13: Backbone | Param | Latency | ...; the caption /
        # the text say 512x512 for every backbone latency.
        (row, ) = candidates
        assert figure.size == (512, 512)
        if figure.table == 5:
            assert '512' in caption
        cell = row[figure.column]
    if expected:
        assert cell == expected
    else:
        assert float(cell) == figure.ms, (cell, figure)


#: The network each paper row describes, from the paper's text: Table 17's
#: rows are Appendix F's layouts of iFormer-M; Tables 5 and 13 time the
#: dense-prediction backbones, which Appendix F builds with channel-chunked
#: hybrid SHMA (n=16 at 512x512); Table 18 times the classification
#: networks, global SHMA at 224 (Table 17, row "SHMA 224").
TABLE17_ROWS = {'SHMA': 'global', 'Hybrid SHMA': 'hybrid',
                'CC Hybrid SHMA': 'cc-hybrid'}


def _paper_key(figure):
    if figure.table == 17:
        return f'iformer-m:{TABLE17_ROWS[figure.row]}'
    if figure.row.startswith('iFormer-'):
        arch = figure.row[len('iFormer-'):].lower()
        layout = 'global' if figure.table == 18 else 'cc-hybrid'
        return f'iformer-{arch}:{layout}'
    from iformer_mm.deploy.backbones import PEERS
    norm = figure.row.replace('-', '').lower()
    (key, ) = [k for k, (label, _, _) in PEERS.items()
               if label.replace('-', '').lower() == norm]
    return key


@pytest.mark.parametrize('figure', PAPER_FIGURES,
                         ids=[f'{f.key}@{f.size[0]}-T{f.table}'
                              for f in PAPER_FIGURES])
def test_paper_figure_is_on_the_network_the_paper_describes(figure):
    assert figure.key == _paper_key(figure)


def test_every_paper_table_cited_is_parsed():
    assert {f.table for f in PAPER_FIGURES} == {5, 13, 17, 18}
    # Table 17's three iFormer-M layouts at 512 are on the layouts that
    # Appendix F describes.
    t17 = {f.key: f.ms for f in PAPER_FIGURES
           if f.table == 17 and f.size == (512, 512)}
    assert t17 == {'iformer-m:global': None, 'iformer-m:hybrid': 11.46,
                   'iformer-m:cc-hybrid': 4.0}


def test_released_code_figures_name_file_function_and_comment():
    code = {f.key: f for f in PUBLISHED_LATENCIES if f.table is None}
    assert {k: (f.ms, f.function) for k, f in code.items()} == {
        'iformer-m:authors': (4.3, 'iFormer_m'),
        'iformer-m:authors-fa': (4.0, 'iFormer_m_faster'),
        'iformer-l2:authors': (9.06, 'iFormer_l2'),
    }
    for figure in code.values():
        assert figure.file == 'detection/iformer.py'
        assert float(re.search(r'([\d.]+)ms$', figure.quote)[1]) == \
            figure.ms
        assert figure.source.startswith('detection/iformer.py, iFormer_')
    # Where the paper and the released code disagree, the paper's row says so.
    (cc, ) = [f for f in published_latencies('iformer-m:cc-hybrid',
                                             (512, 512)) if f.table == 17]
    assert 'iFormer_m_faster' in cc.note and '4.3' in cc.note


def test_figures_only_at_their_size_and_layout():
    assert published_latencies('iformer-m:cc-hybrid', (640, 640)) == []
    assert published_latencies('iformer-m:authors', (224, 224)) == []
    assert [f.ms for f in published_latencies('iformer-m:global',
                                              (224, 224))] == [1.10, 1.10]
    # No figure of one layout leaks to another layout of the same arch.
    for key in ('iformer-m:window', 'iformer-l:authors-fa',
                'iformer-h:cc-hybrid'):
        assert published_latencies(key) == []


def test_report_prints_figures_only_at_their_size():
    spec = resolve_backbone('iformer-m:hybrid')
    assert [f['iphone13_ms'] for f in spec.published_at((512, 512))] == \
        [11.46]
    assert spec.published_at((640, 640)) is None
    assert resolve_backbone('iformer-m:global').published_at(
        (224, 224))[0]['iphone13_ms'] == 1.10


def test_markdown_at_640_has_no_512_figure():
    from iformer_mm.deploy import report
    spec = resolve_backbone('iformer-m')
    results = [dict(key=spec.key, label=spec.label, status='ok',
                    paper=spec.published_at(size), params_m=8.9)
               for size in ((640, 640), (512, 512))]
    table = report.latency_table(results, dict(threads=2), '640x640')
    row640, row512 = table.splitlines()[2:]
    assert row640.endswith('| – |')
    assert '4.00 (paper, Table 17); 4.00 (paper, Table 5)' in row512
