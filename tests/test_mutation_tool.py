"""benchmarks/mutation.py: its groups name files that exist, its
list of equivalent mutants names lines that exist, its work dir is its own
and its report adds up. The mutation run itself is a benchmark, not a test.
"""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'benchmarks', 'mutation.py')


@pytest.fixture(scope='module')
def mutation():
    spec = importlib.util.spec_from_file_location('mutation_tool', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_group_names_modules_and_tests_that_exist(mutation):
    for name, (modules, tests) in mutation.GROUPS.items():
        found = mutation._expand(modules, ROOT)
        assert found, name
        assert all(p.endswith('.py') for p in found)
        # each pattern finds something: a renamed test file is noticed
        for pattern in tests:
            assert mutation._expand([pattern], ROOT), (name, pattern)
        for node in [t for t in tests if '::' in t]:
            path, test = node.split('::', 1)
            with open(osp.join(ROOT, path)) as f:
                assert f'def {test}(' in f.read(), node
    out = subprocess.run([sys.executable, SCRIPT, '--list'],
                         capture_output=True, text=True, check=True).stdout
    assert sorted(line.split(':')[0] for line in out.splitlines()) == \
        sorted(mutation.GROUPS)


def test_every_listed_equivalent_is_a_line_of_its_module(mutation):
    """A stale entry (the line was changed or removed) would silently stop
    matching; each must name a line that is still in its module."""
    entries = mutation.load_equivalents()
    assert entries
    for e in entries:
        with open(osp.join(ROOT, e['module'])) as f:
            lines = [ln.strip() for ln in f.read().splitlines()]
        assert e['line'] in lines, e
        assert e['operator'].startswith('core/'), e
        assert len(e['reason']) > 20, e


def test_equivalents_file_format_errors_say_what_is_expected(mutation,
                                                             tmp_path):
    bad = tmp_path / 'eq.txt'
    bad.write_text('# comment\n\nmod.py | core/X | a line\n')
    with pytest.raises(SystemExit, match='expected "module | operator'):
        mutation.load_equivalents(str(bad))
    good = tmp_path / 'ok.txt'
    good.write_text('m.py | core/AddNot | if x: | why it cannot matter\n'
                    'm.py | core/NumberReplacer@9 | f(a[0], b[0]) | one\n')
    assert mutation.load_equivalents(str(good)) == [
        dict(module='m.py', operator='core/AddNot', column=None,
             line='if x:', reason='why it cannot matter'),
        dict(module='m.py', operator='core/NumberReplacer', column=9,
             line='f(a[0], b[0])', reason='one')]
    item = dict(module='m.py', operator='core/AddNot', start=[3, 4])
    entries = mutation.load_equivalents(str(good))
    assert mutation._is_equivalent(item, 'if x:', entries)
    assert mutation._is_equivalent(item, 'if y:', entries) is None
    assert mutation._is_equivalent(dict(item, operator='core/Other'),
                                   'if x:', entries) is None
    # with a column, only the mutant that starts there
    number = dict(module='m.py', operator='core/NumberReplacer')
    assert mutation._is_equivalent(dict(number, start=[3, 9]),
                                   'f(a[0], b[0])', entries)
    assert mutation._is_equivalent(dict(number, start=[3, 4]),
                                   'f(a[0], b[0])', entries) is None


def test_work_dir_is_never_one_it_did_not_create(mutation, tmp_path):
    mine = tmp_path / 'work'
    mutation.ensure_workdir(str(mine))
    assert (mine / mutation.STAMP).is_file()
    mutation.ensure_workdir(str(mine))  # its own: reused
    theirs = tmp_path / 'theirs'
    theirs.mkdir()
    (theirs / 'notes.txt').write_text('keep')
    with pytest.raises(SystemExit, match='was not created by this script'):
        mutation.ensure_workdir(str(theirs))
    assert os.listdir(theirs) == ['notes.txt']
    proc = subprocess.run([sys.executable, SCRIPT, '--groups', 'runner',
                           '--work-dir', str(theirs)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and 'choose another --work-dir' in \
        proc.stderr
    assert os.listdir(theirs) == ['notes.txt']


def test_report_scores_groups_modules_and_the_total(mutation, tmp_path,
                                                    capsys):
    class Args:
        sample, seed = 5, 3
    survivor = dict(module='a.py', line=3, operator='core/X', text='x')
    results = [
        dict(group='g1', total=100, sampled=5, killed=4,
             survived=[survivor], score=0.8,
             per_module={'a.py': dict(killed=1, survived=1),
                         'b.py': dict(killed=3, survived=0)}),
        dict(group='g2', total=10, sampled=5, killed=5, survived=[],
             score=1.0, per_module={'c.py': dict(killed=5, survived=0)}),
        dict(group='g3', skipped=True)]
    total = mutation.write_report(str(tmp_path), results, 'abc1234', Args)
    assert total == pytest.approx(9 / 10)
    md = (tmp_path / 'report.md').read_text()
    assert '| g1 | 100 | 5 | 4 | 1 | 80% |' in md
    assert '| &nbsp; a.py | | | 1 | 1 | 50% |' in md
    assert '| all | | | 9 | 1 | 90% |' in md
    assert 'commit abc1234' in md and 'g3' not in md
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['commit'] == 'abc1234' and report['seed'] == 3


def test_mutant_time_out_leaves_a_survivor_time_to_run(mutation):
    """A survivor runs every test: its time-out must exceed the baseline
    with margin (else it would be scored as killed by the time-out alone),
    and by default stays near it (a mutant looping forever costs little)."""
    assert mutation.group_timeout(None, 10) == 60.0
    assert mutation.group_timeout(None, 100) == 301.0
    assert mutation.group_timeout(30, 10) == 30.0
    assert mutation.group_timeout(30, 20) == 41.0
    assert mutation.group_timeout(600, 100) == 600.0
