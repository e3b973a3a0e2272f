"""tools/train.py and tools/test.py take every option of the upstream
tools/train.py and tools/test.py of mmdet, mmseg and mmpretrain.

The upstream parsers are read from the scripts those packages install
(``<package>/.mim/tools/{train,test}.py``), not from a copy: when an
upstream release adds or changes an option, this test says so.
"""
import argparse
import importlib.util
import os.path as osp

import pytest

from iformer_mm.engine import cli

PACKAGES = ('mmdet', 'mmseg', 'mmpretrain')


class _Parser(Exception):
    pass


def _capture(call):
    """The ArgumentParser that ``call()`` builds, caught at parse_args."""
    original = argparse.ArgumentParser.parse_args

    def grab(self, *args, **kwargs):
        raise _Parser(self)
    argparse.ArgumentParser.parse_args = grab
    try:
        call()
    except _Parser as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f'{call} parsed no arguments')


def upstream_parser(package, tool):
    mod = pytest.importorskip(package)
    path = osp.join(osp.dirname(mod.__file__), '.mim', 'tools', f'{tool}.py')
    assert osp.isfile(path), f'{package} installs no {path}'
    spec = importlib.util.spec_from_file_location(
        f'_upstream_{package}_{tool}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _capture(module.parse_args)


def _options(parser):
    return {s: a for a in parser._actions for s in a.option_strings}


def _shape(action):
    choices = tuple(action.choices) if action.choices else None
    return (action.nargs, action.const, choices, type(action).__name__)


OURS = {'train': lambda: _capture(lambda: cli.parse_train_args(['x.py'])),
        'test': lambda: _capture(
            lambda: cli.parse_test_args(['x.py', 'y.pth']))}


@pytest.mark.parametrize('package', PACKAGES)
@pytest.mark.parametrize('tool', ['train', 'test'])
def test_every_upstream_option_is_taken_alike(package, tool):
    ours = _options(OURS[tool]())
    for flag, theirs in _options(upstream_parser(package, tool)).items():
        assert flag in ours, f'{package} tools/{tool}.py has {flag}'
        if (package, tool, flag) == ('mmseg', 'train', '--resume'):
            # mmseg: a bare flag (latest checkpoint); ours also takes a
            # path, as mmdet and mmpretrain do
            assert cli.parse_train_args(['x.py', '--resume']).resume == \
                'auto'
            continue
        assert _shape(ours[flag]) == _shape(theirs), (package, tool, flag)


def test_no_pin_memory_and_no_persistent_workers_reach_every_loader(
        tmp_path):
    cfg_path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                        'configs', 'iformer_t_in1k.py')
    args = cli.parse_train_args([cfg_path, '--work-dir', str(tmp_path),
                                 '--no-pin-memory',
                                 '--no-persistent-workers'])
    cfg = cli.train_cfg_from_args(args)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[name]['pin_memory'] is False, name
        assert cfg[name]['persistent_workers'] is False, name
    plain = cli.train_cfg_from_args(cli.parse_train_args(
        [cfg_path, '--work-dir', str(tmp_path)]))
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert plain[name]['pin_memory'] is True, name
        assert plain[name]['persistent_workers'] is True, name
