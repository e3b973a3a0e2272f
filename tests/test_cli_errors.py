"""Bad input to the tools: one line on stderr, exit code 2, no traceback.

Most cases call the tools' entry points in this process through
:func:`iformer_mm.engine.errors_cli.run_tool`, exactly as ``tools/*.py`` do
(fast: the OpenMMLab libraries are imported once). A few run the scripts
themselves in a subprocess, to prove they are wired to the same handler.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from iformer_mm.engine.errors_cli import run_tool, user_error_message
from iformer_mm.errors import CheckpointError, ConfigError, UserError

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, 'configs', 'toy', 'maskrcnn_iformer_t_toy.py')
CLS = osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py')


def _cli():
    pytest.importorskip('mmdet', reason='needs the OpenMMLab stack')
    from iformer_mm.engine import cli
    return cli


def assert_one_line_error(code, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert 'Traceback' not in err
    assert 'error:' in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_in_process(main, argv, capsys):
    code = run_tool(main, list(argv), prog='tool.py')
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def good_ckpt(tmp_path):
    """A file that is a checkpoint container (its content does not matter
    to the cases that fail before loading)."""
    path = tmp_path / 'model.pth'
    torch.save({'state_dict': {}}, path)
    return str(path)


# --------------------------------------------------------------------------
# The handler itself
# --------------------------------------------------------------------------
def test_user_error_is_one_line_exit_2(capsys):
    def main(argv):
        raise ConfigError('first line\nsecond line')
    code, _, err = run_in_process(main, [], capsys)
    line = assert_one_line_error(code, err, 'first line second line')
    assert line.startswith('tool.py: error:')


def test_debug_shows_the_traceback(capsys):
    def main(argv):
        raise CheckpointError('bad file')
    code = run_tool(main, ['--debug'], prog='tool.py')
    err = capsys.readouterr().err
    assert code == 2
    assert 'Traceback' in err and 'bad file' in err


def test_debug_flag_is_removed_from_argv(capsys):
    seen = []

    def main(argv):
        seen.append(argv)
        return 0
    assert run_tool(main, ['a', '--debug', 'b']) == 0
    assert seen == [['a', 'b']]


def test_a_bug_keeps_its_traceback():
    def main(argv):
        raise ZeroDivisionError('a bug, not a user mistake')
    with pytest.raises(ZeroDivisionError):
        run_tool(main, [])


def test_main_without_argv_parameter_reads_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['prog', 'x', '--debug'])
    seen = []
    assert run_tool(lambda: seen.append(list(sys.argv)) or 3) == 3
    assert seen == [['prog', 'x']]


def test_known_mistake_types_become_messages():
    err = FileNotFoundError(2, 'No such file or directory', 'cfg.py')
    assert user_error_message(err) == \
        "No such file or directory: 'cfg.py'"
    assert user_error_message(SyntaxError(
        'There are syntax errors in config file x.py: invalid syntax'))
    assert user_error_message(ValueError('a bug')) is None
    assert user_error_message(AssertionError()) is None
    assert isinstance(ConfigError('x'), UserError)


def test_missing_dataset_message_is_folded_to_one_line():
    from mmengine.config import Config

    from iformer_mm.datasets import DatasetNotFoundError, check_datasets
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='CocoDataset', data_root='data/coco/',
        ann_file='annotations/x.json', data_prefix=dict(img='train/')))))
    with pytest.raises(DatasetNotFoundError) as info:
        check_datasets(cfg, ('train', ))
    assert '\n' in str(info.value)  # the layout is drawn over lines
    msg = user_error_message(info.value)
    assert '\n' not in msg and '├' not in msg
    assert "'data/coco/annotations/x.json' does not exist" in msg
    assert 'docs/getting_started.md#coco-data-layout' in msg


def test_registry_key_error_suggests_the_closest_type():
    pytest.importorskip('mmengine')
    from mmengine.registry import HOOKS
    with pytest.raises(KeyError) as info:
        HOOKS.build(dict(type='CheckpointHok'))
    msg = user_error_message(info.value)
    assert "'CheckpointHok'" in msg and "did you mean 'CheckpointHook'" in msg


def test_unexpected_keyword_suggests_the_closest_argument():
    pytest.importorskip('mmengine')
    from mmengine.registry import HOOKS
    with pytest.raises(TypeError) as info:
        HOOKS.build(dict(type='LoggerHook', intervall=3))
    msg = user_error_message(info.value)
    assert "'intervall'" in msg and "did you mean 'interval'" in msg


# --------------------------------------------------------------------------
# tools/train.py and tools/test.py (in process)
# --------------------------------------------------------------------------
def test_missing_config_names_the_closest_file(capsys, tmp_path,
                                               monkeypatch):
    cli = _cli()
    monkeypatch.chdir(tmp_path)
    wrong = DET.replace('_toy.py', '_tyo.py')
    code, _, err = run_in_process(cli.train_main, [wrong], capsys)
    assert_one_line_error(code, err, 'not found',
                          "did you mean '" + DET + "'")


def test_missing_checkpoint(capsys, tmp_path):
    cli = _cli()
    code, _, err = run_in_process(
        cli.test_main, [DET, str(tmp_path / 'nope.pth')], capsys)
    assert_one_line_error(code, err, 'nope.pth', 'does not exist')


def _bad_checkpoints(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.zeros(64, 64)}}, good)
    data = good.read_bytes()
    files = {
        'empty': b'',
        'text': b'this is a README, not weights\n',
        'truncated': data[:len(data) // 2],
        'random': bytes([0x17]) + os.urandom(4095),
    }
    paths = {}
    for name, content in files.items():
        path = tmp_path / f'{name}.pth'
        path.write_bytes(content)
        paths[name] = str(path)
    return paths


@pytest.mark.parametrize('kind,needle', [
    ('empty', '(0 bytes)'), ('text', 'not a checkpoint'),
    ('truncated', 'truncated'), ('random', 'not a checkpoint')])
def test_broken_checkpoint(capsys, tmp_path, kind, needle):
    cli = _cli()
    path = _bad_checkpoints(tmp_path)[kind]
    code, _, err = run_in_process(cli.test_main, [DET, path], capsys)
    assert_one_line_error(code, err, needle, osp.basename(path))


def test_out_into_missing_directory(capsys, tmp_path, good_ckpt):
    cli = _cli()
    out = str(tmp_path / 'no' / 'such' / 'preds.pkl')
    code, _, err = run_in_process(
        cli.test_main, [DET, good_ckpt, '--out', out], capsys)
    assert_one_line_error(code, err, 'does not exist')


def test_out_into_unwritable_directory(capsys, tmp_path, good_ckpt,
                                       monkeypatch):
    cli = _cli()
    ro = tmp_path / 'readonly'
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        # root may write anywhere: inject the refusal the OS would give.
        real_access = os.access
        monkeypatch.setattr(os, 'access', lambda p, mode: False if osp.abspath(
            p) == str(ro) and mode & os.W_OK else real_access(p, mode))
    code, _, err = run_in_process(
        cli.test_main, [DET, good_ckpt, '--out', str(ro / 'p.pkl')], capsys)
    ro.chmod(0o755)
    assert_one_line_error(code, err, 'not writable')


def test_what_out_may_name_follows_the_codebase(tmp_path):
    """mmseg's ``--out`` is a folder of prediction images (an existing one
    is fine), or a file with ``--out-item metrics``; detection and
    classification write one .pkl file, never into a folder's name."""
    cli = _cli()
    folder = tmp_path / 'preds'
    folder.mkdir()
    cli.check_out_path(str(folder), 'mmseg', None)
    cli.check_out_path(str(folder) + '/', 'mmseg', None)
    cli.check_out_path(str(tmp_path / 'new_folder'), 'mmseg', None)
    cli.check_out_path(str(tmp_path / 'm.json'), 'mmseg', 'metrics')
    for scope, item in (('mmseg', 'metrics'), ('mmdet', None),
                        ('mmpretrain', None)):
        with pytest.raises(ConfigError, match='directory'):
            cli.check_out_path(str(folder), scope, item)
    cli.check_out_path(str(tmp_path / 'p.pkl'), 'mmdet', None)
    with pytest.raises(ConfigError, match='.pkl'):
        cli.check_out_path(str(tmp_path / 'p.json'), 'mmdet', None)


def test_out_item_without_out(capsys, good_ckpt):
    cli = _cli()
    code, _, err = run_in_process(
        cli.test_main, [DET, good_ckpt, '--out-item', 'metrics'], capsys)
    assert_one_line_error(code, err, '--out-item needs --out')


def test_unknown_attention_lists_authors(capsys, good_ckpt):
    cli = _cli()
    code, _, err = run_in_process(cli.test_main, [
        DET, good_ckpt, '--cfg-options', 'model.backbone.attention=hybird'],
        capsys)
    line = assert_one_line_error(code, err, "'hybird'", "'authors'",
                                 "did you mean 'hybrid'")
    for name in ('global', 'window', 'hybrid'):
        assert repr(name) in line


def test_hook_typo_fails_before_training(capsys, tmp_path, monkeypatch):
    cli = _cli()
    monkeypatch.chdir(tmp_path)
    code, out, err = run_in_process(cli.train_main, [
        DET, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
        'default_hooks.checkpoint.intervall=1'], capsys)
    assert_one_line_error(code, err, 'default_hooks.checkpoint',
                          "'intervall'", "did you mean 'interval'")
    # Nothing was built: no work dir, no generated data.
    assert not (tmp_path / 'w').exists()
    assert not (tmp_path / 'data').exists()


def test_config_syntax_error(capsys, tmp_path):
    cli = _cli()
    bad = tmp_path / 'bad.py'
    bad.write_text(f"_base_ = {DET!r}\nmodel = dict(backbone=dict(\n")
    code, _, err = run_in_process(cli.train_main, [str(bad)], capsys)
    assert_one_line_error(code, err, 'syntax error', 'bad.py', 'line 2')


def test_tta_mask_rcnn_says_mmdet_has_none(capsys, good_ckpt):
    cli = _cli()
    code, _, err = run_in_process(
        cli.test_main, [DET, good_ckpt, '--tta'], capsys)
    assert_one_line_error(code, err, 'mmdet', 'Mask R-CNN', '--tta')


# --------------------------------------------------------------------------
# The scripts themselves (subprocess)
# --------------------------------------------------------------------------
def _script(args, cwd):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_test_script_random_bytes_checkpoint(tmp_path):
    _cli()
    path = _bad_checkpoints(tmp_path)['random']
    proc = _script([osp.join(ROOT, 'tools', 'test.py'), DET, path], tmp_path)
    line = assert_one_line_error(proc.returncode, proc.stderr,
                                 'not a checkpoint')
    assert line.startswith('test.py: error:')


@pytest.mark.slow
def test_train_script_unknown_backbone_key(tmp_path):
    _cli()
    proc = _script([osp.join(ROOT, 'tools', 'train.py'), DET,
                    '--cfg-options', 'model.backbone.drop_path=0.1'],
                   tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, 'model.backbone',
                          "'drop_path'", "did you mean 'drop_path_rate'")


@pytest.mark.slow
def test_get_flops_script_unknown_attention(tmp_path):
    proc = _script([osp.join(ROOT, 'tools', 'get_flops.py'), 'm',
                    '--attention', 'local'], tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "'local'",
                          "'authors'")
    proc = _script([osp.join(ROOT, 'tools', 'get_flops.py'), 'tt'],
                   tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "'tt'",
                          "did you mean 't'")


# --------------------------------------------------------------------------
# tools/dist_*.sh: the interpreter comes from $PYTHON
# --------------------------------------------------------------------------
def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize('script,args', [
    ('dist_train.sh', ['missing_config.py', '2']),
    ('dist_test.sh', ['missing_config.py', 'missing.pth', '2'])])
def test_dist_scripts_run_the_python_of_PYTHON(tmp_path, script, args):
    """With PATH holding no interpreter that has torch, the launcher and
    the ranks run $PYTHON: a rank reaches the tool and reports the user's
    mistake in its one line. torchrun stops the other rank as soon as the
    first one exits, so only one line is certain."""
    pytest.importorskip('mmengine')
    env = dict(os.environ, PATH='/usr/bin:/bin', PORT=str(_free_port()),
               MASTER_ADDR='127.0.0.1', PYTHON=sys.executable)
    cmd = ['bash', osp.join(ROOT, 'tools', script), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    tool = script.replace('dist_', '').replace('.sh', '.py')
    assert proc.returncode != 0
    assert out.count(f'{tool}: error:') >= 1, out[-3000:]
    # Without $PYTHON the script cannot use this interpreter.
    del env['PYTHON']
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f'{tool}: error:' not in out
