"""tools/train.py and tools/test.py run the upstream tools/train.py and
tools/test.py of the config's codebase (mmdet, mmseg, mmpretrain), take
every option of all three, and each option reaches the runner's config
the same way whichever codebase the config belongs to.

The upstream parsers are read from the scripts those packages install
(``<package>/.mim/tools/{train,test}.py``), not from a copy: when an
upstream release adds or changes an option, this test says so.
"""
import argparse
import importlib.util
import os.path as osp

import pytest
import torch

from iformer_mm.config import SCOPES
from iformer_mm.engine import cli
from iformer_mm.errors import ConfigError

from ._tools import ROOT, config_the_runner_gets

TOY = {
    'mmdet': osp.join(ROOT, 'configs', 'toy', 'maskrcnn_iformer_t_toy.py'),
    'mmseg': osp.join(ROOT, 'configs', 'toy', 'fpn_iformer_t_toy.py'),
    'mmpretrain': osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py'),
}
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
COMMON = {'-h', '--help', '--work-dir', '--cfg-options', '--launcher',
          '--local_rank', '--local-rank'}


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


def upstream_parser(scope, tool):
    path = cli.upstream_tool(scope, tool)
    spec = importlib.util.spec_from_file_location(
        f'_upstream_{scope}_{tool}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _capture(module.parse_args)


def _options(parser):
    return {s: a for a in parser._actions for s in a.option_strings}


def _shape(action):
    choices = tuple(action.choices) if action.choices else None
    return (action.nargs, action.const, choices, type(action).__name__)


@pytest.mark.parametrize('scope', SCOPES)
@pytest.mark.parametrize('tool', ['train', 'test'])
def test_every_upstream_option_is_taken_alike(scope, tool):
    ours = _options(cli.parser(tool))
    theirs = _options(upstream_parser(scope, tool))
    for flag, action in theirs.items():
        assert flag in ours, f'{scope} tools/{tool}.py has {flag}'
        if (scope, tool, flag) == ('mmseg', 'train', '--resume'):
            # mmseg: a bare flag (latest checkpoint); ours also takes a
            # path, as mmdet and mmpretrain do
            continue
        assert _shape(ours[flag]) == _shape(action), (scope, tool, flag)
    # what we hand to the upstream tool as its own option, it has
    assert cli.NATIVE[(scope, tool)] <= set(theirs) - COMMON


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / 'model.pth'
    torch.save(dict(state_dict={}, meta={}), str(path))
    return str(path)


@pytest.mark.parametrize('scope', SCOPES)
def test_train_options_reach_the_runner_alike(scope, tmp_path):
    work = str(tmp_path / 'w')

    def cfg(*args):
        return config_the_runner_gets(
            'train', [TOY[scope], '--work-dir', work, *args])
    plain = cfg()
    assert plain.work_dir == work and plain.get('resume', False) is False
    assert plain.optim_wrapper.type == 'OptimWrapper'
    assert plain.val_cfg is not None
    flags = cfg('--amp', '--auto-scale-lr', '--no-validate', '--no-pin-memory',
                '--no-persistent-workers', '--launcher', 'pytorch',
                '--cfg-options', 'train_cfg.val_interval=3')
    assert flags.optim_wrapper.type == 'AmpOptimWrapper'
    assert flags.optim_wrapper.loss_scale == 'dynamic'
    assert flags.auto_scale_lr.enable is True
    assert flags.val_cfg is None and flags.val_dataloader is None
    assert flags.launcher == 'pytorch' and flags.train_cfg.val_interval == 3
    for loader in LOADERS:
        if flags.get(loader):
            assert flags[loader].pin_memory is False, loader
            assert flags[loader].persistent_workers is False, loader
    auto = cfg('--resume')
    assert auto.resume is True and auto.load_from is None
    given = cfg('--resume', str(tmp_path / 'epoch_1.pth'))
    assert given.resume is True and given.load_from == str(
        tmp_path / 'epoch_1.pth')


@pytest.mark.parametrize('scope', SCOPES)
def test_test_options_reach_the_runner_alike(scope, tmp_path,
                                             ckpt):
    def cfg(*args):
        return config_the_runner_gets(
            'test', [TOY[scope], ckpt, '--work-dir', str(tmp_path / 'w'),
                     *args])
    plain = cfg()
    assert plain.load_from == ckpt
    assert plain.default_hooks.strict_load.strict is True
    flags = cfg('--allow-partial', '--no-pin-memory', '--amp', '--show-dir',
                'vis', '--interval', '3', '--out', str(tmp_path / 'm.json'),
                '--out-item', 'metrics')
    assert flags.default_hooks.strict_load.strict is False
    assert flags.test_dataloader.pin_memory is False
    assert flags.test_cfg.fp16 is True
    vis = flags.default_hooks.visualization
    assert vis.interval == 3 and vis.get('draw', vis.get('enable')) is True
    assert flags.default_hooks.dump_metrics.out_file == str(
        tmp_path / 'm.json')
    # the configs' hooks paint one image in 50: --show-dir paints them all
    assert cfg('--show-dir', 'vis').default_hooks.visualization.interval == 1


def test_a_path_the_options_cannot_carry_is_refused(tmp_path, ckpt):
    """Paths that go to the upstream tool through --cfg-options (mmseg's
    --resume PATH, --out-item metrics) cannot hold a comma or a space."""
    with pytest.raises(ConfigError, match='--resume'):
        cli.train_argv(cli.parser('train').parse_args(
            [TOY['mmseg'], '--resume', 'a,b.pth']), None, 'mmseg')
    args = cli.parser('test').parse_args([TOY['mmseg'], ckpt, '--out',
                                          str(tmp_path / 'my m.json'),
                                          '--out-item', 'metrics'])
    with pytest.raises(ConfigError, match='--out'):
        cli.test_argv(args, None, 'mmseg')


def test_where_each_codebase_paints_show_dir(tmp_path):
    """The folder the test tool reports for ``--show-dir``: mmseg under
    ``vis_data/vis_image``, mmpretrain the folder itself, mmdet the newest
    run's timestamp folder of the work dir (none from an older run)."""
    import os
    import time
    show = 'shown'
    assert cli.show_dir_of(str(tmp_path), show, 'mmseg', 0) == \
        osp.abspath(osp.join(show, 'vis_data', 'vis_image'))
    assert cli.show_dir_of(str(tmp_path), show, 'mmpretrain', 0) == \
        osp.abspath(show)
    old, new = tmp_path / '20260101_000000' / show, \
        tmp_path / '20260102_000000' / show
    old.mkdir(parents=True)
    os.utime(old, (1e9, 1e9))
    started = time.time()
    assert cli.show_dir_of(str(tmp_path), show, 'mmdet', started) is None
    new.mkdir(parents=True)
    assert cli.show_dir_of(str(tmp_path), show, 'mmdet', started) == str(new)


def test_upstream_tools_missing_names_the_package_to_reinstall(
        tmp_path, monkeypatch):
    """A codebase installed without its ``.mim/tools`` is a config error
    that says which package to reinstall, and how."""
    fake = tmp_path / 'site' / '__init__.py'
    fake.parent.mkdir()
    fake.write_text('')
    spec = importlib.util.spec_from_file_location('site_pkg', fake)
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: spec)
    for scope, (_, package) in SCOPES.items():
        with pytest.raises(ConfigError) as err:
            cli.upstream_tool(scope, 'train')
        msg = str(err.value).replace(str(tmp_path), '<tmp>')
        assert package in msg and 'tools/install.py' in msg, msg
