"""The stack fixes in iformer_mm.compat, each on the real code path."""
import argparse
import os
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import iformer_mm  # noqa: F401  (applies the fixes)
from iformer_mm.compat import (RELEASE_CHECKPOINT_GLOBALS,
                               RUNNER_CHECKPOINT_GLOBALS,
                               UnsafeCheckpointError, safe_load)
from iformer_mm.compat.checkpoint import torch_defaults_to_weights_only

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


@pytest.fixture(autouse=True)
def _no_force_env(monkeypatch):
    """The fixes must work without torch's escape hatches."""
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.delenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', raising=False)


# --------------------------------------------------------------------------
# A tiny but complete mmengine Runner: training with validation, a numpy
# metric kept by CheckpointHook(save_best), two param schedulers, EMA.
# --------------------------------------------------------------------------
def _runner(work_dir, max_epochs, **kwargs):
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    class ToyModel(BaseModel):

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x, y, mode='tensor'):
            out = self.linear(torch.stack(x))
            if mode == 'loss':
                return dict(loss=((out - torch.stack(y))**2).mean())
            return list(out)

    class ToyData(Dataset):
        metainfo = dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)])

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return dict(x=torch.tensor([i / 8., 1.]),
                        y=torch.tensor([i / 4.]))

    class NumpyMetric(BaseMetric):
        """Returns numpy scalars, as e.g. mmseg's IoUMetric does."""

        def process(self, data_batch, data_samples):
            self.results.append(len(data_samples))

        def compute_metrics(self, results):
            return dict(score=np.float64(sum(results)) / 16,
                        count=np.int64(len(results)))

    loader = dict(dataset=ToyData(), batch_size=4, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    cfg = dict(
        model=ToyModel(), work_dir=str(work_dir),
        train_dataloader=loader, val_dataloader=loader,
        val_evaluator=[NumpyMetric()], val_cfg=dict(),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs, val_interval=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01,
                                          momentum=0.9)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0,
                 end=2),
            dict(type='MultiStepLR', milestones=[1], by_epoch=True)
        ],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1,
                            save_best='score', rule='greater'),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='EMAHook')],
        randomness=dict(seed=0), default_scope='mmengine')
    cfg.update(kwargs)
    return Runner(**cfg)


@pytest.fixture(scope='module')
def runner_checkpoints(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('runner')
    runner = _runner(work_dir, max_epochs=2)
    runner.train()
    return work_dir, runner


def test_runner_checkpoints_need_more_than_torch_defaults(runner_checkpoints):
    """Without the allow-list, torch 2.6+ refuses Runner checkpoints."""
    if not torch_defaults_to_weights_only():
        pytest.skip('torch < 2.6 does not default to weights_only=True')
    work_dir, _ = runner_checkpoints
    path = str(work_dir / 'epoch_2.pth')
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(saved)
    # ... and our allow-list covers every global they reference
    from iformer_mm.compat import allow_globals
    with allow_globals(RUNNER_CHECKPOINT_GLOBALS):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []


def test_allow_list_is_exactly_runner_types():
    from mmengine.logging.history_buffer import HistoryBuffer

    names = set()
    for g in RUNNER_CHECKPOINT_GLOBALS:
        obj, name = g if isinstance(g, tuple) else (
            g, f'{g.__module__}.{g.__qualname__}')
        names.add(name)
        assert obj is HistoryBuffer or name.startswith(
            ('numpy.', 'builtins.getattr')), name
    assert 'builtins.getattr' in names
    # no general-purpose callables
    assert getattr not in [g[0] if isinstance(g, tuple) else g
                           for g in RUNNER_CHECKPOINT_GLOBALS]
    assert argparse.Namespace not in torch.serialization.get_safe_globals()


def test_runner_checkpoint_round_trip(runner_checkpoints):
    from mmengine.runner.checkpoint import _load_checkpoint

    work_dir, runner = runner_checkpoints
    names = sorted(p.name for p in work_dir.iterdir() if p.suffix == '.pth')
    assert 'epoch_1.pth' in names and 'epoch_2.pth' in names
    assert any(n.startswith('best_score') for n in names)
    for name in names:
        ckpt = _load_checkpoint(str(work_dir / name), map_location='cpu')
        hub = ckpt['message_hub']
        assert type(hub['log_scalars']['train/loss']).__name__ == \
            'HistoryBuffer'
        assert isinstance(hub['runtime_info']['best_score'], np.floating)
    # the weights_only load returns what an unrestricted unpickle of the
    # same (trusted, self-written) file returns
    path = str(work_dir / 'epoch_2.pth')
    ckpt = _load_checkpoint(path, map_location='cpu')
    _assert_same(ckpt, torch.load(path, map_location='cpu',
                                  weights_only=False))
    assert ckpt['meta']['epoch'] == 2
    assert {'optimizer', 'param_schedulers', 'ema_state_dict'} <= set(ckpt)
    # and the weights are the ones the Runner trained (EMAHook stores the
    # averaged weights as 'state_dict' and the raw ones as 'ema_state_dict')
    raw = {k.replace('module.', '', 1): v
           for k, v in ckpt['ema_state_dict'].items() if k != 'steps'}
    for k, v in runner.model.state_dict().items():
        assert k in ckpt['state_dict']
        assert torch.equal(v, raw[k]) or torch.equal(v, ckpt['state_dict'][k])


def _assert_same(a, b, where='ckpt'):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f'{where}[{k!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{where}[{i}]')
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif hasattr(a, '__dict__') and not callable(a):
        _assert_same(vars(a), vars(b), f'{where}.__dict__')
    else:
        assert a == b, where


def test_runner_resume(runner_checkpoints, tmp_path):
    work_dir, first = runner_checkpoints
    runner = _runner(tmp_path, max_epochs=3, resume=True,
                     load_from=str(work_dir / 'epoch_2.pth'))
    runner.train()
    assert runner.epoch == 3
    assert runner.iter == 6  # 2 epochs resumed + 1 trained, 2 iters each
    hub = runner.message_hub
    # the history of the first run came back and went on
    assert hub.get_scalar('train/loss').data[0].size > 2


def test_runner_checkpoints_survive_torch_safe_globals_context(
        runner_checkpoints):
    """``torch.serialization.safe_globals`` removes on exit every global it
    was given, even ones allowed before (here numpy.dtype, as a scoped load
    of a release file would). Runner checkpoints must still load."""
    from mmengine.runner.checkpoint import _load_checkpoint

    work_dir, _ = runner_checkpoints
    with torch.serialization.safe_globals([np.dtype, argparse.Namespace]):
        pass
    try:
        assert np.dtype not in torch.serialization.get_safe_globals()
        ckpt = _load_checkpoint(str(work_dir / 'epoch_2.pth'),
                                map_location='cpu')
        assert ckpt['meta']['epoch'] == 2
    finally:
        torch.serialization.add_safe_globals(list(RUNNER_CHECKPOINT_GLOBALS))


def test_allow_globals_restores_the_list_exactly():
    from iformer_mm.compat import allow_globals

    before = set(torch.serialization.get_safe_globals())
    assert np.dtype in before
    with allow_globals([np.dtype, argparse.Namespace]):
        assert argparse.Namespace in torch.serialization.get_safe_globals()
    assert set(torch.serialization.get_safe_globals()) == before


def test_tools_test_style_load(runner_checkpoints):
    """What tools/test.py does: load_from + runner.test() -> load_checkpoint."""
    from mmengine.runner import load_checkpoint

    work_dir, runner = runner_checkpoints
    model = _runner(work_dir, max_epochs=1).model
    ckpt = load_checkpoint(model, str(work_dir / 'epoch_1.pth'),
                           map_location='cpu')
    assert ckpt['meta']['epoch'] == 1


# --------------------------------------------------------------------------
# Refusing checkpoints that would run code
# --------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)},
                'meta': {'x': _Payload(marker)}}, str(path))
    return path, marker


def test_payload_is_real(malicious):
    """Sanity check of the test itself: an unrestricted load runs it."""
    path, marker = malicious
    torch.load(str(path), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize('force_env', [False, True])
def test_malicious_checkpoint_refused(malicious, monkeypatch, force_env):
    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint

    if not torch_defaults_to_weights_only():
        pytest.skip('needs torch >= 2.6')
    if force_env:  # the escape hatch does not open our loaders
        monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    path, marker = malicious
    for load in (lambda: _load_checkpoint(str(path), map_location='cpu'),
                 lambda: load_checkpoint(nn.Linear(1, 1), str(path)),
                 lambda: safe_load(path)):
        with pytest.raises(UnsafeCheckpointError) as err:
            load()
        msg = str(err.value)
        assert 'system' in msg and 'evil.pth' in msg
        assert 'nothing from it was executed' in msg
        assert not marker.exists()


def test_malicious_checkpoint_refused_by_runner(malicious, tmp_path):
    if not torch_defaults_to_weights_only():
        pytest.skip('needs torch >= 2.6')
    path, marker = malicious
    runner = _runner(tmp_path / 'w', max_epochs=1, load_from=str(path))
    with pytest.raises(UnsafeCheckpointError):
        runner.load_or_resume()
    assert not marker.exists()


def test_narrowed_getattr_refuses_other_attributes(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    class Sneaky:

        def __reduce__(self):
            return getattr, (HistoryBuffer, 'register_statistics')

    path = tmp_path / 'sneaky.pth'
    torch.save({'x': Sneaky()}, str(path))
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)
    # while the statistics methods themselves resolve
    good = tmp_path / 'good.pth'
    buf = HistoryBuffer()
    buf.update(1.0)
    torch.save({'buf': buf}, str(good))
    assert safe_load(good)['buf'].mean() == 1.0


def test_release_globals_only_in_scope(tmp_path):
    """Authors' release files need argparse.Namespace and numpy scalars:
    allowed inside safe_load(extra_safe_globals=...), not globally."""
    from mmengine.runner.checkpoint import _load_checkpoint

    path = tmp_path / 'release.pth'
    torch.save({'model': {'w': torch.ones(2)},
                'args': argparse.Namespace(lr=1e-3, model='iformer_t'),
                'max_accuracy': np.float64(74.1), 'epoch': np.int64(299),
                'dtype': np.dtype('float32')}, str(path))
    with pytest.raises(UnsafeCheckpointError, match='Namespace'):
        _load_checkpoint(str(path), map_location='cpu')
    ckpt = safe_load(path, extra_safe_globals=RELEASE_CHECKPOINT_GLOBALS)
    assert ckpt['args'].model == 'iformer_t'
    assert float(ckpt['max_accuracy']) == pytest.approx(74.1)
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    for other in (False, None, 0, 'yes'):
        with pytest.raises(ValueError, match='always loads with '
                           'weights_only=True'):
            safe_load(path, weights_only=other)
    assert safe_load(path, weights_only=True,
                     extra_safe_globals=RELEASE_CHECKPOINT_GLOBALS)


# --------------------------------------------------------------------------
# coremltools: traced and exported conversion with the installed numpy
# --------------------------------------------------------------------------
class _ShapeArithmetic(nn.Module):
    """Traced, the shape arithmetic becomes aten::Int ops -- the ones
    coremltools 9.0 could not convert under numpy 2.4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        x = x.view(b, c * (h // 2), 2, w).mean(2).view(b, c, h // 2, w)
        return nn.functional.interpolate(x, size=(h, w), mode='nearest')


@pytest.fixture(scope='module')
def ct():
    pytest.importorskip('coremltools')
    import coremltools
    return coremltools


def _convert(ct, how):
    model = _ShapeArithmetic().eval()
    x = torch.randn(1, 3, 16, 16)
    if how == 'traced':
        return ct.convert(torch.jit.trace(model, x),
                          inputs=[ct.TensorType(shape=x.shape)],
                          convert_to='mlprogram')
    exported = torch.export.export(model, (x, )).run_decompositions({})
    return ct.convert(exported, convert_to='mlprogram')


def _numpy_24_semantics():
    """numpy 2.4 raises where older numpy only warned; make it raise."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings('error', message='Conversion of an array with '
                            'ndim > 0 to a scalar')
    return ctx


@pytest.mark.parametrize('how', ['traced', 'exported'])
def test_coreml_conversion(ct, how):
    ctx = _numpy_24_semantics()
    try:
        mlmodel = _convert(ct, how)
    finally:
        ctx.__exit__(None, None, None)
    assert type(mlmodel).__name__ == 'MLModel'


def test_coreml_patch_is_what_makes_traced_work(ct):
    from coremltools.converters.mil.frontend.torch import ops

    from iformer_mm.compat.coreml import _MARK, patch_coremltools
    assert getattr(ops._cast, _MARK, False), 'patch not applied on import'
    original = ops._cast._iformer_mm_original
    patched = ops._cast
    ops._cast = original
    ctx = _numpy_24_semantics()
    try:
        with pytest.raises(Exception, match='0-dimensional|ndim > 0'):
            _convert(ct, 'traced')
    finally:
        ctx.__exit__(None, None, None)
        ops._cast = patched
    assert patch_coremltools(ops)


# --------------------------------------------------------------------------
# the byte-level diagnosis and the version gate
# --------------------------------------------------------------------------
@pytest.mark.parametrize('version,expected', [
    ('2.5.1', False), ('2.6.0', True), ('2.13.0+cu130', True),
    ('2.10.0', True), ('3.0.0', True), ('1.13.1', False)])
def test_weights_only_default_follows_the_torch_version(
        monkeypatch, version, expected):
    from iformer_mm.compat import checkpoint as cc
    monkeypatch.setattr(torch, '__version__', version)
    assert cc.torch_defaults_to_weights_only() is expected


# torch's weights_only errors are long; the message quotes the one line
# that says what was wrong: (torch's error, that line, refused as unsafe)
UNPICKLER_ERRORS = [
    ('Weights only load failed. This file can still be loaded...\n'
     'Please file an issue with the following so that we can make...\n'
     'WeightsUnpickler error: \n'
     '\n'
     'Unsupported global: GLOBAL posix.system was not an allowed '
     'global by default.\n'
     'Check the documentation of torch.load to learn more.',
     'Unsupported global: GLOBAL posix.system was not an allowed global '
     'by default.', True),
    ('header\nWeightsUnpickler error: Unsupported operand 149\nmore',
     'Unsupported operand 149', False),
    ('only line\nsecond', 'only line', False),
    # a wording without the colon: the line as it is
    ('header\nWeightsUnpickler error Unsupported global os.system',
     'WeightsUnpickler error Unsupported global os.system', True),
    # torch 2.13's words for a global of a blocked module
    ('Weights only load failed. In PyTorch 2.6, we changed ...\n\n'
     '\nTrying to load unsupported GLOBAL posix.system whose module '
     'posix is blocked.\n\nCheck the documentation of torch.load',
     'Trying to load unsupported GLOBAL posix.system whose module posix '
     'is blocked.', True),
]


@pytest.mark.parametrize('error,line,unsafe', UNPICKLER_ERRORS)
def test_the_message_quotes_the_line_of_the_unpicklers_error(
        tmp_path, monkeypatch, error, line, unsafe):
    """A refused global is refused quoting that line; other unpickling
    errors on intact-looking bytes call the file damaged, quoting it."""
    from iformer_mm.errors import CheckpointError
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(2)}, str(legacy),
               _use_new_zipfile_serialization=False)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(error)
    monkeypatch.setattr(torch, 'load', refuse)
    with pytest.raises(CheckpointError) as err:
        safe_load(str(legacy))
    if unsafe:
        assert isinstance(err.value, UnsafeCheckpointError)
        assert f"Refused to load checkpoint {str(legacy)!r}: {line}, which " \
            'is not among' in str(err.value)
    else:
        assert not isinstance(err.value, UnsafeCheckpointError)
        assert f'is damaged: its pickle data cannot be parsed ({line}). ' \
            in str(err.value)


def test_text_is_told_from_binary():
    import io

    from iformer_mm.compat.checkpoint import diagnose_checkpoint_file

    def kind(data):
        problem = diagnose_checkpoint_file(io.BytesIO(data))
        if 'neither the zip archive torch.save writes nor a pickle' in \
                problem:
            return 'binary'
        return re.match(r'not a checkpoint: (an HTML page|a text file) ',
                        problem).group(1)
    page = ('<!DOCTYPE html>\n<html>\n\t<body>Not Found</body>\n</html>\n'
            * 20).encode()
    assert kind(page) == 'an HTML page'
    # a sample cut inside a multi-byte character is still text
    cut = ('Prüfsumme für die Datei, héhé ' * 30).encode()
    cut = cut[:cut.index('ü'.encode(), 100) + 1]
    with pytest.raises(UnicodeDecodeError):
        cut.decode('utf-8')
    assert kind(cut) == 'a text file'
    # 4% control characters: still text; 10%: binary
    assert kind(b'a' * 96 + b'\x01' * 4) == 'a text file'
    assert kind(b'a' * 90 + b'\x01' * 10) == 'binary'
    assert kind(bytes(range(256))) == 'binary'


def test_a_file_is_judged_by_its_first_512_bytes(tmp_path):
    """The diagnosis reads a 512-byte sample: 487 printable of 512 is
    text (95.1%), whatever follows (here a 513th byte that would bring it
    under 95%, then binary)."""
    from iformer_mm.compat.checkpoint import diagnose_checkpoint_file
    path = tmp_path / 'notes.pth'
    path.write_bytes(b'n' * 487 + b'\x01' * 25 + b'\x01' + bytes(4096))
    assert diagnose_checkpoint_file(str(path)).startswith(
        'not a checkpoint: a text file (4609 bytes')
    path.write_bytes(b'n' * 486 + b'\x01' * 26 + bytes(4096))
    assert 'neither the zip archive' in diagnose_checkpoint_file(str(path))


def test_diagnosis_tells_pickles_from_other_bytes(tmp_path):
    from iformer_mm.compat.checkpoint import diagnose_checkpoint_file
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(bytes([7, 200, 3, 255, 0, 1] * 50))
    assert 'neither the zip archive torch.save writes nor a pickle' in \
        diagnose_checkpoint_file(str(junk))
    plain = tmp_path / 'plain.pkl'
    plain.write_bytes(pickle.dumps({'w': [1.0, 2.0]}, protocol=2))
    assert 'a pickle stream that torch.save did not write' in \
        diagnose_checkpoint_file(str(plain))
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(2)}, str(legacy),
               _use_new_zipfile_serialization=False)
    assert diagnose_checkpoint_file(str(legacy)) is None
    current = tmp_path / 'current.pth'
    torch.save({'w': torch.ones(2)}, str(current))
    assert diagnose_checkpoint_file(str(current)) is None


# errors that torch.load raises on damaged bytes: each becomes a one-line
# CheckpointError when the bytes explain it, and stays itself otherwise
LOAD_ERRORS = [EOFError, OSError, RuntimeError, KeyError, IndexError,
               ValueError, TypeError, AttributeError]


@pytest.mark.parametrize('error', LOAD_ERRORS)
def test_load_errors_on_damaged_bytes_become_checkpoint_errors(
        tmp_path, monkeypatch, error):
    from iformer_mm.errors import CheckpointError

    def broken(*args, **kwargs):
        raise error('injected')
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(bytes([7, 200, 3, 255, 0, 1] * 50))
    intact = tmp_path / 'intact.pth'
    torch.save({'w': torch.ones(2)}, str(intact))
    monkeypatch.setattr(torch, 'load', broken)
    with pytest.raises(CheckpointError, match='neither the zip archive'):
        safe_load(str(junk))
    if error is EOFError:  # the data ended early: truncated
        with pytest.raises(CheckpointError, match='is truncated'):
            safe_load(str(intact))
    else:
        with pytest.raises(error, match='injected'):  # bytes look intact
            safe_load(str(intact))


def test_unparsable_pickle_data_is_called_damaged(tmp_path, monkeypatch):
    from iformer_mm.errors import CheckpointError
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(2)}, str(legacy),
               _use_new_zipfile_serialization=False)

    def broken(*args, **kwargs):
        raise pickle.UnpicklingError(
            'Weights only load failed.\nWeightsUnpickler error: '
            'Unsupported operand 66')
    monkeypatch.setattr(torch, 'load', broken)
    with pytest.raises(CheckpointError) as err:
        safe_load(str(legacy))
    assert 'is damaged: its pickle data cannot be parsed (Unsupported ' \
        'operand 66). The download or save was interrupted' in str(err.value)


def test_missing_path_and_directory_are_told_apart(tmp_path):
    from iformer_mm.compat.checkpoint import (CheckpointNotFoundError,
                                              check_checkpoint_path)
    with pytest.raises(CheckpointNotFoundError, match='is a directory'):
        check_checkpoint_path(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match='does not exist'):
        check_checkpoint_path(tmp_path / 'nope.pth')
    f = tmp_path / 'w.pth'
    f.write_bytes(b'x')
    assert check_checkpoint_path(str(f)) == str(f)


def test_patch_finds_coremltools_by_itself(ct):
    from coremltools.converters.mil.frontend.torch import ops

    from iformer_mm.compat.coreml import _MARK, patch_coremltools
    assert patch_coremltools() is True
    assert getattr(ops._cast, _MARK, False)
    # a frontend without the helper it patches is left alone
    assert patch_coremltools(argparse.Namespace()) is False


# --------------------------------------------------------------------------
# file objects, damaged zip archives, the http loader
# --------------------------------------------------------------------------
def _saved_bytes(obj=None):
    import io
    buf = io.BytesIO()
    torch.save(obj if obj is not None else {'w': torch.arange(4.)}, buf)
    return buf.getvalue()


def test_file_objects_load_and_keep_their_position():
    import io
    from iformer_mm.compat.checkpoint import diagnose_checkpoint_file
    buf = io.BytesIO(_saved_bytes())
    buf.seek(5)
    assert diagnose_checkpoint_file(buf) is None
    assert buf.tell() == 5  # the diagnosis reads without moving it
    buf.seek(0)
    assert torch.equal(safe_load(buf)['w'], torch.arange(4.))


def test_damaged_file_objects_are_named_and_diagnosed(tmp_path):
    import io
    from iformer_mm.errors import CheckpointError
    data = _saved_bytes()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(data[:len(data) // 2])
    with open(cut, 'rb') as f, pytest.raises(CheckpointError) as err:
        safe_load(f)
    assert 'cut.pth' in str(err.value) and 'truncated' in str(err.value)
    with pytest.raises(CheckpointError, match='truncated'):
        safe_load(io.BytesIO(data[:len(data) // 2]))
    # bytes lost inside (start and end intact): the archive's end points
    # before its start, as a file on disk and in memory
    gap = data[:64] + data[164:]
    cut.write_bytes(gap)
    for source in (str(cut), io.BytesIO(gap)):
        with pytest.raises(CheckpointError, match='truncated'):
            safe_load(source)


def _zip_with(members, corrupt=None):
    """A zip archive (torch.save's container) holding ``members``; with
    ``corrupt`` the bytes of that member are flipped after its CRC was
    computed."""
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_STORED) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    data = bytearray(buf.getvalue())
    if corrupt is not None:
        payload = members[corrupt]
        at = bytes(data).index(payload)
        data[at] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize('kind,needle', [
    ('no_data_pkl', 'a zip archive without the data.pkl that torch.save '
     'writes'),
    ('bad_crc', 'damaged: member archive/data.pkl of its zip archive fails '
     'its checksum'),
    ('no_end', 'truncated: its zip archive has no end'),
    ('cut_member', 'truncated'),
])
def test_zip_damage_is_told_by_kind(tmp_path, kind, needle):
    from iformer_mm.compat.checkpoint import diagnose_checkpoint_file
    from iformer_mm.errors import CheckpointError
    payload = pickle.dumps({'w': 1}, protocol=2) * 20
    if kind == 'no_data_pkl':
        data = _zip_with({'archive/readme.txt': b'hello'})
    elif kind == 'bad_crc':
        data = _zip_with({'archive/data.pkl': payload}, corrupt='archive/'
                         'data.pkl')
    elif kind == 'no_end':
        whole = _zip_with({'archive/data.pkl': payload})
        data = whole[:whole.rindex(b'PK\x01\x02')]  # central directory cut
    else:
        # a real checkpoint whose central directory is intact but whose
        # last member is cut short inside
        whole = _saved_bytes()
        directory = whole.rindex(b'PK\x01\x02', 0,
                                 whole.rindex(b'PK\x05\x06'))
        data = whole  # keep the directory, zero a member's bytes
        start = whole.index(b'PK\x03\x04', 30)
        data = whole[:start + 10] + b'\x00' * (directory - start - 10) + \
            whole[directory:]
    path = tmp_path / 'x.pth'
    path.write_bytes(data)
    problem = diagnose_checkpoint_file(str(path))
    assert problem is not None and needle in problem, problem
    with pytest.raises(CheckpointError) as err:
        safe_load(str(path))
    assert needle in str(err.value)
    assert 'x.pth' in str(err.value)


def test_intact_zip_checkpoint_has_no_diagnosis(tmp_path):
    from iformer_mm.compat.checkpoint import diagnose_checkpoint_file
    path = tmp_path / 'ok.pth'
    path.write_bytes(_saved_bytes())
    assert diagnose_checkpoint_file(str(path)) is None


def test_http_checkpoints_are_downloaded_once_and_loaded_safely(
        tmp_path, monkeypatch, malicious):
    """mmengine's http(s) loader is ours: the file is fetched into the
    cache once, then read with weights_only=True (malicious ones refused)."""
    import shutil
    import torch.hub
    from mmengine.runner.checkpoint import CheckpointLoader
    good = tmp_path / 'src' / 'good.pth'
    good.parent.mkdir()
    good.write_bytes(_saved_bytes())
    evil_path, marker = malicious
    served = {'https://example.com/w/good.pth?x=1': good,
              'http://example.com/evil.pth': evil_path}
    fetched = []

    def download(url, dst, progress=True):
        fetched.append(url)
        if url not in served:
            raise RuntimeError('HTTP Error 404: Not Found')
        shutil.copy(served[url], dst)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    url = 'https://example.com/w/good.pth?x=1'
    for _ in range(2):
        ckpt = CheckpointLoader.load_checkpoint(url, map_location='cpu')
        assert torch.equal(ckpt['w'], torch.arange(4.))
    assert fetched == [url]  # the second load used the cache
    assert (tmp_path / 'hub' / 'checkpoints' / 'good.pth').is_file()
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint('http://example.com/evil.pth')
    assert not marker.exists()
    # a failed download: the tools' one-line error, with what to do
    from iformer_mm.errors import CheckpointError
    with pytest.raises(CheckpointError) as err:
        CheckpointLoader.load_checkpoint('https://example.com/gone.pth')
    assert str(err.value).startswith('Could not download https://example.'
                                     'com/gone.pth (HTTP Error 404') and \
        '\n' not in str(err.value)


def test_refusal_names_the_global_without_the_static_scan(malicious,
                                                          monkeypatch):
    """Where torch cannot list a file's globals, the refusal still names
    the one the unpickler stopped at."""
    path, marker = malicious
    monkeypatch.delattr(torch.serialization,
                        'get_unsafe_globals_in_checkpoint')
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    assert 'system' in str(err.value) and 'nothing from it was executed' \
        in str(err.value)
    assert not marker.exists()


def test_loaders_are_not_patched_where_torch_has_no_allow_list(monkeypatch):
    from iformer_mm.compat import checkpoint as cc
    monkeypatch.delattr(torch.serialization, 'add_safe_globals')
    assert cc.torch_defaults_to_weights_only() is False
    monkeypatch.setattr(cc, '_PATCHED', False)
    assert cc.patch_mmengine_checkpoint_loaders() is False


def test_loader_patch_is_in_place_after_import_and_idempotent():
    """``import iformer_mm`` applied the patch: calling it again reports
    it in place and leaves mmengine's loaders as they were."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from iformer_mm.compat import checkpoint as cc
    before = dict(CheckpointLoader._schemes)
    assert cc.patch_mmengine_checkpoint_loaders() is True
    assert cc.patch_mmengine_checkpoint_loaders() is True
    assert CheckpointLoader._schemes == before
    assert CheckpointLoader._schemes[''] is cc.load_from_local


# --------------------------------------------------------------------------
# the cast patch, against a stand-in of coremltools' frontend module
# --------------------------------------------------------------------------
class _Var:

    def __init__(self, shape, val=None):
        self.shape, self.val = shape, val

    def can_be_folded_to_const(self):
        return self.val is not None


class _FakeFrontend:
    """Just what ``_cast`` uses: ``mb``, ``_get_inputs`` and ``_cast``."""

    def __init__(self):
        self.calls = []
        frontend = self

        class MB:
            @staticmethod
            def const(val, name):
                frontend.calls.append(('const', val, name))
                return ('const', val)

            @staticmethod
            def squeeze(x, name):
                frontend.calls.append(('squeeze', name))
                return _Var(())

            @staticmethod
            def cast(x, dtype, name):
                frontend.calls.append(('cast', dtype, name, x.shape))
                return ('cast', dtype)

        self.mb = MB
        self._get_inputs = lambda context, node, expected: context.inputs

        def _cast(context, node, dtype, dtype_name):
            raise AssertionError('the original must have been replaced')
        self._cast = _cast


class _Context:

    def __init__(self, x):
        self.inputs, self.added = [x], {}

    def add(self, value, name):
        self.added[name] = value


class _Node:
    name = 'n'


def test_cast_patch_folds_length_one_arrays_to_python_scalars():
    from iformer_mm.compat.coreml import _MARK, patch_coremltools
    fe = _FakeFrontend()
    original = fe._cast
    assert patch_coremltools(fe) and getattr(fe._cast, _MARK)
    assert fe._cast._iformer_mm_original is original
    patched = fe._cast
    assert patch_coremltools(fe) and fe._cast is patched  # idempotent
    ctx = _Context(_Var((1, 1), np.array([[3.7]])))
    fe._cast(ctx, _Node, int, 'int32')
    assert ctx.added['n'] == ('const', 3) and fe.calls == [
        ('const', 3, 'n')]
    value = np.float32(2.5)
    ctx = _Context(_Var((), value))
    fe._cast(ctx, _Node, np.float32, 'fp32')
    assert ctx.added['n'].val is value  # already that type: passed through
    for shape in ((2, ), (0, ), (1, 0)):  # empty is no length-1 tensor
        with pytest.raises(ValueError, match='scalar or a length 1 tensor'):
            fe._cast(_Context(_Var(shape, np.zeros(shape))), _Node, int,
                     'int32')


def test_cast_patch_squeezes_runtime_values_of_length_one():
    from iformer_mm.compat.coreml import patch_coremltools
    fe = _FakeFrontend()
    patch_coremltools(fe)
    ctx = _Context(_Var((1, )))
    fe._cast(ctx, _Node, int, 'int32')
    assert fe.calls == [('squeeze', 'n_item'), ('cast', 'int32', 'n', ())]
    assert ctx.added['n'] == ('cast', 'int32')
    fe.calls.clear()
    fe._cast(_Context(_Var(())), _Node, float, 'fp32')
    assert fe.calls == [('cast', 'fp32', 'n', ())]  # a scalar: no squeeze


@pytest.mark.parametrize('missing', ['_cast', '_get_inputs', 'mb'])
def test_cast_patch_leaves_an_unknown_frontend_alone(missing):
    from iformer_mm.compat.coreml import patch_coremltools
    fe = _FakeFrontend()
    delattr(fe, missing)
    before = getattr(fe, '_cast', None)
    assert patch_coremltools(fe) is False
    assert getattr(fe, '_cast', None) is before


@pytest.mark.parametrize('rank', [0, 1])
def test_http_download_in_a_distributed_run(tmp_path, monkeypatch, rank):
    """Rank 0 downloads before the barrier; the other ranks wait for it
    and then read the cached file (fetching only if it is still absent)."""
    import shutil
    import mmengine.dist
    import torch.hub
    from iformer_mm.compat.checkpoint import load_from_http
    src = tmp_path / 'w.pth'
    src.write_bytes(_saved_bytes())
    events = []

    def download(url, dst, progress=True):
        events.append('download')
        shown.append(progress)
        shutil.copy(src, dst)
    shown = []
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    monkeypatch.setattr(mmengine.dist, 'get_dist_info', lambda: (rank, 2))
    monkeypatch.setattr(torch.distributed, 'barrier',
                        lambda *a, **k: events.append('barrier'))
    ckpt = load_from_http('https://example.com/w.pth',
                          model_dir=str(tmp_path / 'cache'))
    assert torch.equal(ckpt['w'], torch.arange(4.))
    assert events == (['download', 'barrier'] if rank == 0 else
                      ['barrier', 'download'])
    events.clear()  # the cache is there: nobody downloads again
    load_from_http('https://example.com/w.pth',
                   model_dir=str(tmp_path / 'cache'))
    assert events == ['barrier']
    # a progress bar only where someone watches (stdin a terminal), unless
    # asked for either way
    assert shown == [os.isatty(0)] and isinstance(shown[0], bool)
    load_from_http('https://example.com/x.pth', progress=True,
                   model_dir=str(tmp_path / 'cache2'))
    assert shown[1] is True


def test_in_memory_files_report_their_size():
    import io
    from iformer_mm.compat.checkpoint import diagnose_checkpoint_file
    assert diagnose_checkpoint_file(io.BytesIO(b'')) == \
        'not a checkpoint: the file is empty (0 bytes)'
    page = io.BytesIO(b'<html><body>404</body></html>\n')
    page.seek(3)
    assert diagnose_checkpoint_file(page).startswith(
        'not a checkpoint: an HTML page (30 bytes,')
    assert page.tell() == 3


def test_patch_without_coremltools_is_a_no_op(monkeypatch):
    import importlib
    from iformer_mm.compat import coreml
    real = importlib.import_module

    def no_coremltools(name, *args, **kwargs):
        if name.startswith('coremltools'):
            raise ImportError(f'No module named {name!r}')
        return real(name, *args, **kwargs)
    monkeypatch.setattr(importlib, 'import_module', no_coremltools)
    assert coreml.patch_coremltools() is False


def test_release_files_may_hold_numpy_values_of_any_common_dtype(tmp_path):
    """Training scripts store metrics and counters as numpy scalars and
    arrays of whatever dtype: with the release allow-list in scope they all
    load; without it, they are refused (nothing runs)."""
    path = tmp_path / 'release.pth'
    values = dict(epoch=np.int64(299), acc=np.float64(80.4),
                  half=np.float16(0.5), flag=np.bool_(True),
                  small=np.uint8(3), signed=np.int8(-2),
                  hist=np.arange(4, dtype=np.int16),
                  args=argparse.Namespace(model='iFormer', lr=4e-3))
    torch.save(dict(model={'w': torch.ones(1)}, **values), str(path))
    ckpt = safe_load(str(path), extra_safe_globals=RELEASE_CHECKPOINT_GLOBALS)
    for key, value in values.items():
        if isinstance(value, np.ndarray):
            assert ckpt[key].dtype == value.dtype and \
                (ckpt[key] == value).all()
        else:
            assert ckpt[key] == value and type(ckpt[key]) is type(value)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(str(path))


def test_import_hook_leaves_every_other_import_alone(tmp_path, monkeypatch):
    """Only coremltools' frontend is loaded through the patching hook: any
    other module keeps its own loader, so its package data stays readable
    (pkgutil.get_data asks the loader)."""
    import importlib.machinery
    import pkgutil
    import sys

    from iformer_mm.compat.coreml import install_coremltools_hook
    monkeypatch.setattr(sys, 'meta_path', list(sys.meta_path))
    monkeypatch.delitem(sys.modules,
                        'coremltools.converters.mil.frontend.torch.ops',
                        raising=False)
    install_coremltools_hook()  # the frontend is not loaded: the hook waits
    pkg = tmp_path / 'a_plugin'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'labels.txt').write_bytes(b'cat\ndog\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import a_plugin
        assert type(a_plugin.__spec__.loader) is \
            importlib.machinery.SourceFileLoader
        assert pkgutil.get_data('a_plugin', 'labels.txt') == b'cat\ndog\n'
    finally:
        sys.modules.pop('a_plugin', None)


@pytest.mark.slow
def test_import_hook_comes_before_other_finders(tmp_path):
    """Another import hook already on sys.meta_path (a profiler's, a
    type checker's) must not get coremltools' frontend first: ours goes in
    front, so the frontend is still patched when it is imported."""
    import subprocess
    import sys
    code = '''
import importlib.abc, importlib.machinery, sys
class Other(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith('coremltools.converters.mil.frontend.torch'):
            return importlib.machinery.PathFinder.find_spec(fullname, path)
        return None
sys.meta_path.insert(0, Other())
import iformer_mm  # noqa
assert 'coremltools.converters.mil.frontend.torch.ops' not in sys.modules
from coremltools.converters.mil.frontend.torch import ops
print(getattr(ops._cast, '_iformer_mm_cast_patch', False))
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, cwd=str(tmp_path),
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == 'True'
