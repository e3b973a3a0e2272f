"""Checkpoints: timm and the authors' release format, against timm's network.

timm (a test-only dependency) ships an independent implementation of the
iFormer classifier; the same random weights must give the same logits.
"""
import argparse
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

import iformer_mm  # noqa: F401
from iformer_mm.errors import CheckpointError, CheckpointMismatchError
from iformer_mm.models.backbones import IFormer
from iformer_mm.models.checkpoint import (load_model_checkpoint,
                                          safe_torch_load, to_openmmlab)

from ._layouts import to_release

timm = pytest.importorskip('timm', reason='timm is the reference network')
pytest.importorskip('mmpretrain')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _randomize(model, seed=0):
    """timm's random init plus non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def timm_model(arch, distilled=False):
    torch.manual_seed(0)
    name = f'iformer_{arch}' + ('_distilled' if distilled else '')
    return _randomize(timm.create_model(name, pretrained=False))


def classifier(arch, distilled=False):
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmpretrain')
    dim = IFormer.arch_zoo[arch]['dims'][-1]
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='IFormer', arch=arch, out_indices=(3, )),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='IFormerClsHead', num_classes=1000, in_channels=dim,
                  distillation=distilled))).eval()


def save_release(state, path):
    torch.save({'model': to_release(state), 'epoch': np.int64(299),
                'max_accuracy': np.float64(80.4),
                'args': argparse.Namespace(model='iFormer', lr=4e-3)}, path)


@pytest.mark.parametrize('arch', ['t', 'm', 'l'])
def test_classifier_matches_timm(arch):
    ref = timm_model(arch)
    ours = classifier(arch)
    missing, unexpected = ours.load_state_dict(to_openmmlab(ref.state_dict()),
                                               strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x, mode='tensor') - ref(x)).abs().max() <= 1e-4
        # stage-4 features reach magnitudes of ~50: compare relatively too
        torch.testing.assert_close(ours.backbone(x)[-1],
                                   ref.forward_features(x),
                                   rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_release_file_loads_everywhere(tmp_path):
    ref = timm_model('m', distilled=True)
    path = str(tmp_path / 'iFormer_m_distill.pth')
    save_release(ref.state_dict(), path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected_logits, expected_feat = ref(x), ref.forward_features(x)

    # 1. backbone init_cfg (what the mmdet/mmseg configs do)
    backbone = IFormer('m', init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    with torch.no_grad():
        assert (backbone.eval()(x)[-1] - expected_feat).abs().max() <= 1e-4

    # 2. tools/convert_checkpoint.py -> a full mmpretrain classifier
    out = str(tmp_path / 'converted.pth')
    subprocess.run([sys.executable, osp.join(ROOT, 'tools/convert_checkpoint.py'),
                    path, out], check=True, cwd=ROOT)
    model = classifier('m', distilled=True)
    state = safe_torch_load(out)['state_dict']
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    with torch.no_grad():
        assert (model(x, mode='tensor') - expected_logits).abs().max() <= 1e-4
        # the distilled pair folds into one linear
        from iformer_mm.models.backbones import switch_to_deploy_all
        switch_to_deploy_all(model)
        assert model.head.head_dist is None
        assert (model(x, mode='tensor') - expected_logits).abs().max() <= 1e-4


def test_timm_file_loads_via_init_cfg(tmp_path):
    ref = timm_model('t')
    path = str(tmp_path / 'timm_t.pth')
    torch.save(ref.state_dict(), path)
    net = IFormer('t', init_cfg=dict(type='Pretrained', checkpoint=path))
    net.init_weights()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x)[-1], ref.forward_features(x),
                              atol=1e-5)


def test_classifier_checkpoint_of_another_arch_is_refused(tmp_path):
    """The whole-model route (tools/test.py, demo, benchmark) on an
    mmpretrain classifier: a release file of another arch is an error that
    names the arch, not a half-loaded model."""
    path = str(tmp_path / 'm.pth')
    save_release(timm_model('m', distilled=True).state_dict(), path)
    with pytest.raises(CheckpointMismatchError,
                       match=r"iFormer-M backbone \(arch='m'\)"):
        load_model_checkpoint(classifier('t', distilled=True), path)
    # the right arch loads whole, both heads included
    model = classifier('m', distilled=True)
    report = load_model_checkpoint(model, path)
    assert report.complete and len(report.loaded) == len(
        [k for k in model.state_dict()])


def test_classifier_inside_a_wrapper_loads_its_head_too(tmp_path):
    """The classifier head's weights go wherever the model keeps its
    ``IFormerClsHead``: in a user's wrapper (a distillation student, say)
    that is ``student.head.``, and the release file loads whole there."""
    class Distiller(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = classifier('t')

    path = str(tmp_path / 't.pth')
    ref = timm_model('t')
    save_release(ref.state_dict(), path)
    wrapped = Distiller()
    report = load_model_checkpoint(wrapped, path)
    assert report.complete
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(wrapped.student(x, mode='tensor'), ref(x),
                              atol=1e-5)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    path = str(tmp_path / 'm.pth')
    save_release(timm_model('m').state_dict(), path)
    net = IFormer('t', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointMismatchError) as err:
        net.init_weights()
    msg = str(err.value)
    assert 'stem.conv1.c.weight (file (24, 3, 5, 5), model (16, 3, 5, 5))' \
        in msg


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    state = timm_model('t').state_dict()
    torch.save({'model': state, 'payload': _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match='Refused to load'):
        safe_torch_load(path)
    net = IFormer('t', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match='Refused to load'):
        net.init_weights()
    assert not marker.exists()


def test_missing_checkpoint_file_is_clear(tmp_path):
    net = IFormer('t', init_cfg=dict(type='Pretrained',
                                     checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(CheckpointError, match="nope.pth' does not exist"):
        net.init_weights()


# --------------------------------------------------------------------------
# wrappers, downloads and models that are not iFormers
# --------------------------------------------------------------------------
def test_weights_are_found_in_every_wrapper_and_missing_ones_named():
    from iformer_mm.models.checkpoint import unwrap_state_dict
    w = {'a.weight': torch.ones(1)}
    ema = {'a.weight': torch.zeros(1)}
    assert unwrap_state_dict(w) is w
    # state_dict, then model, then model_ema
    assert unwrap_state_dict({'model': w, 'model_ema': ema}) == w
    assert unwrap_state_dict({'model_ema': ema, 'epoch': 3}) == ema
    assert unwrap_state_dict({'state_dict': w, 'model': ema}) == w
    assert unwrap_state_dict({'model': w, 'model_ema': ema},
                             key='model_ema') == ema
    # a state dict with a stray non-tensor entry: its tensors
    assert unwrap_state_dict(dict(w, epoch=3)) == w
    assert unwrap_state_dict({'model': dict(w, step=1)}) == w
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        unwrap_state_dict([w])
    with pytest.raises(CheckpointError,
                       match=r"no 'ema' entry; it has \['model'\]"):
        unwrap_state_dict({'model': w}, key='ema')
    # a long checkpoint: its first 8 keys (sorted), enough to recognise it
    many = {f'k{i:02d}': i for i in range(12)}
    with pytest.raises(CheckpointError) as err:
        unwrap_state_dict(many, key='ema')
    assert str(err.value).endswith(
        "it has ['k00', 'k01', 'k02', 'k03', 'k04', 'k05', 'k06', 'k07'].")
    with pytest.raises(CheckpointError) as err:
        unwrap_state_dict(many)
    assert str(err.value).endswith(
        "its top-level keys are ['k00', 'k01', 'k02', 'k03', 'k04', 'k05', "
        "'k06', 'k07'].")
    with pytest.raises(CheckpointError, match="'model' entry holds no "
                       'tensors'):
        unwrap_state_dict({'model': {'step': 1}})
    with pytest.raises(CheckpointError, match=r"holds no weights.*"
                       r"top-level keys are \['epoch', 'lr'\]"):
        unwrap_state_dict({'epoch': 3, 'lr': 0.1})


def test_url_checkpoints_are_cached_and_download_errors_explained(
        tmp_path, monkeypatch):
    import shutil
    from iformer_mm.models.checkpoint import load_checkpoint_file
    src = tmp_path / 'src.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, str(src))
    fetched = []

    def download(url, dst, progress=True):
        fetched.append(url)
        if 'missing' in url:
            raise RuntimeError('HTTP Error 404: Not Found')
        shutil.copy(src, dst)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    url = 'https://example.com/r/iFormer_m.pth'
    for _ in range(2):
        ckpt = load_checkpoint_file(url)
        assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
    assert fetched == [url]
    assert (tmp_path / 'hub' / 'checkpoints' / 'iFormer_m.pth').is_file()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file('http://example.com/missing.pth')
    msg = str(err.value)
    assert 'Could not download http://example.com/missing.pth (HTTP Error ' \
        '404' in msg and 'checkpoint=/path/missing.pth' in msg
    assert not (tmp_path / 'hub' / 'checkpoints' / 'missing.pth').exists()


@pytest.mark.parametrize('terminal', [True, False])
def test_download_progress_bar_only_on_a_terminal(tmp_path, monkeypatch,
                                                  terminal):
    """A progress bar where the user's stdin is a terminal, none in a
    batch job's log (the terminal is simulated)."""
    import shutil
    from iformer_mm.models.checkpoint import download_checkpoint
    src = tmp_path / 'src.pth'
    torch.save({'w': torch.ones(1)}, str(src))
    shown = []

    def download(url, dst, progress=True):
        shown.append(progress)
        shutil.copy(src, dst)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    monkeypatch.setattr(os, 'isatty', lambda fd: terminal and fd == 0)
    download_checkpoint('https://example.com/a.pth', str(tmp_path / 'hub'))
    download_checkpoint('https://example.com/b.pth', str(tmp_path / 'hub'),
                        progress=False)
    assert shown == [terminal, False]


def test_mixed_naming_is_refused():
    from iformer_mm.models.checkpoint import split_checkpoint
    mixed = {'downsample_layers.0.0.weight': torch.zeros(1),
             'stem.0.conv.weight': torch.zeros(1)}
    with pytest.raises(CheckpointError, match="mixes the authors' backbone "
                       'names'):
        split_checkpoint(mixed)


def test_whole_model_keys_keep_their_parts():
    """A detector's file: backbone keys come out bare, the neck as it is;
    a classifier's head.head.* is the classifier; back to OpenMMLab names
    nothing is lost."""
    from iformer_mm.models.checkpoint import convert_to_ours
    ours = IFormer(arch='t').state_dict()
    whole = {'backbone.' + k: v for k, v in ours.items()}
    whole['neck.lateral_convs.0.conv.weight'] = torch.zeros(2, 2, 1, 1)
    whole['head.head.weight'] = torch.zeros(3, 384)
    converted = convert_to_ours(whole)
    assert [k for k in converted if k.startswith('stem.')] == \
        [k for k in ours if k.startswith('stem.')]
    assert 'neck.lateral_convs.0.conv.weight' in converted
    assert 'head.head.weight' in converted
    assert len(converted) == len(whole)
    from iformer_mm.models.checkpoint import split_checkpoint
    back = to_openmmlab(split_checkpoint(whole))
    assert sorted(back) == sorted(whole)
    assert all(torch.equal(back[k], whole[k]) for k in whole)


def test_models_without_an_iformer_take_the_files_keys(tmp_path):
    """A model with no IFormer (or two) gets the file's keys as they are,
    after a prefix, and strict loading still checks every one."""
    from iformer_mm.models.checkpoint import state_dict_for_model
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    file = {'module.student.0.weight': torch.full((3, 2), 2.0),
            'module.student.0.bias': torch.ones(3),
            'module.teacher.0.weight': torch.zeros(3, 2)}
    state, _ = state_dict_for_model(model, file, prefix='student')
    assert sorted(state) == ['0.bias', '0.weight']
    path = tmp_path / 'distill.pth'
    torch.save({'state_dict': file}, str(path))
    report = load_model_checkpoint(model, str(path), prefix='student.')
    assert report.complete and torch.equal(model[0].bias, torch.ones(3))
    other = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2, 3))
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_checkpoint(other, str(path), prefix='teacher')
    # no "only backbone weights" advice: the model has no iFormer backbone
    assert 'No key matched: is it a checkpoint of this kind of model?' in \
        str(err.value) and 'init_cfg' not in str(err.value)


def test_report_groups_keys_by_module_and_names_the_target():
    """The one-line report counts keys per top-level module (up to six),
    lists ignored heads (up to six), and names the model it was for."""
    from iformer_mm.models.checkpoint import LoadReport, load_state_into_model
    keys = ([f'neck.l{i}.weight' for i in range(3)] +
            [f'rpn_head.c{i}.bias' for i in range(2)] + ['roi_head.fc.w'])
    net = IFormer('t')
    file = dict(net.state_dict(), **{k: torch.zeros(1) for k in keys})
    report = load_state_into_model(net, file, source='f.pth', strict=False,
                                   verbose=False)
    details = report.details()
    assert details.startswith('unexpected 6 (neck.* 3, rpn_head.* 2, '
                              'roi_head.* 1): neck.l0.weight')
    assert report.target == "IFormer(arch='t')"
    report = load_state_into_model(torch.nn.Sequential(), {'w': torch.ones(1)},
                                   source='f.pth', strict=False,
                                   verbose=False)
    assert report.target == 'Sequential'
    many = [f'h{i}.w' for i in range(7)]
    report = LoadReport(source='f.pth', layout='x', target='T',
                        missing=many, ignored=many[:6])
    assert '(h0.* 1, h1.* 1, h2.* 1, h3.* 1, h4.* 1, h5.* 1, ...)' in \
        report.details()
    assert report.summary().endswith(
        '6 ignored (h0.*, h1.*, h2.*, h3.*, h4.*, h5.*)')
    report.ignored = many
    assert report.summary().endswith('h4.*, h5.*, ...)')
    one = LoadReport(source='f.pth', layout='x', target='T',
                     missing=['stem.a', 'stem.b'])
    assert one.details() == 'missing 2: stem.a, stem.b'  # one module


def test_layout_says_where_the_weights_were_and_loads_are_logged(capsys):
    """The load report names the entry the weights came from (none for a
    bare state dict); a complete load is logged once when verbose, and
    nothing when not."""
    from iformer_mm.models.checkpoint import (load_state_into_model,
                                              split_checkpoint)
    net = IFormer('t', out_indices=(3, ))
    weights = net.state_dict()
    assert split_checkpoint(dict(weights)).layout == \
        'backbone, timm/iformer_mm names'
    assert split_checkpoint(dict(state_dict=weights)).layout == \
        "backbone, timm/iformer_mm names, in 'state_dict'"
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_instance('iformer_mm_layout_test',
                                   log_level='INFO')
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger.addHandler(handler)
    try:
        load_state_into_model(net, dict(state_dict=weights), source='f.pth',
                              logger=logger, verbose=False)
        assert lines == []
        load_state_into_model(net, dict(state_dict=weights), source='f.pth',
                              logger=logger)
        assert len(lines) == 1 and lines[0].startswith('Loaded ')
    finally:
        logger.removeHandler(handler)
