"""SHMA through scaled_dot_product_attention (``fused_attn``) and the
authors' named networks."""
import pytest
import torch

import iformer_mm  # noqa: F401
from iformer_mm.models.backbones import iformer as ifm
from iformer_mm.models.backbones.iformer import (AUTHORS_PRESETS, SHMA,
                                                 IFormer, authors_preset,
                                                 build_authors_preset)

from .test_backbone import randomize_bn


pytestmark = pytest.mark.usefixtures('one_thread')


def _pair(arch='t', **kwargs):
    torch.manual_seed(0)
    ref = randomize_bn(IFormer(arch, **kwargs)).eval()
    fused = IFormer(arch, fused_attn=True, **kwargs).eval()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _assert_close(outs_a, outs_b, tol=1e-5):
    for a, b in zip(outs_a, outs_b):
        err = ((a - b).abs().max() / a.abs().max()).item()
        assert err <= tol, err


def test_shma_fused_equals_explicit_with_and_without_mask():
    torch.manual_seed(0)
    explicit = randomize_bn(SHMA(64, 2)).eval()
    fused = SHMA(64, 2, fused_attn=True).eval()
    fused.load_state_dict(explicit.state_dict())
    x = torch.randn(3, 64, 16, 16) * 3
    key_valid = torch.ones(3, 1, 256, dtype=torch.bool)
    key_valid[1, :, 200:] = False     # a window with padded keys
    key_valid[2, :, 7::16] = False
    with torch.no_grad():
        for mask in (None, key_valid):
            a, b = explicit(x, mask), fused(x, mask)
            assert (a - b).abs().max() <= 1e-5 * a.abs().max()
        # The mask really acts in the fused path: values put into the
        # masked tokens change nothing at the valid tokens (SHMA is pointwise
        # except for the attention); without the mask they do.
        y = x.clone().view(3, 64, 256)
        y[1, :, 200:] = 1e3
        y = y.view(3, 64, 16, 16)
        clean = fused(x, key_valid)[1].flatten(1)[:, :200]
        dirty = fused(y, key_valid)[1].flatten(1)[:, :200]
        assert torch.allclose(clean, dirty, atol=1e-5)
        unmasked = fused(y)[1].flatten(1)[:, :200]
        assert not torch.allclose(fused(x)[1].flatten(1)[:, :200], unmasked,
                                  atol=1e-3)


@pytest.mark.parametrize('attention,padding,size', [
    ('global', None, (96, 128)),
    ('hybrid', 'mask', (64, 288)),     # padded windows, masked keys
    ('authors', 'zeros', (64, 288)),   # padded windows, no mask
    ('window', 'mask', (256, 256)),    # no padding, 1 window per map
])
def test_network_fused_equals_explicit(attention, padding, size):
    ref, fused = _pair('t', attention=attention, window_padding=padding,
                       window_chunks=16, layer_scale_init_value=0.5)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        _assert_close(ref(x), fused(x))
        ref.switch_to_deploy()
        fused.switch_to_deploy()
        assert all(m.fused_attn for m in fused.modules()
                   if isinstance(m, SHMA))
        _assert_close(ref(x), fused(x))


def test_fused_path_really_calls_sdpa(monkeypatch):
    calls = []
    real = ifm.F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get('scale'))
        return real(*args, **kwargs)
    monkeypatch.setattr(ifm.F, 'scaled_dot_product_attention', spy)
    _, fused = _pair('t')
    with torch.no_grad():
        fused(torch.randn(1, 3, 64, 64))
    # 3 + 2 SHMA blocks; T's stage-3 qk width 64, stage-4 64 -> 1/8
    assert len(calls) == 5 and all(s == pytest.approx(64 ** -0.5)
                                   for s in calls)


# -- the authors' named networks ----------------------------------------------
def test_authors_presets_table():
    dense = AUTHORS_PRESETS['dense']
    assert sorted(dense) == ['iFormer_l', 'iFormer_l2', 'iFormer_l_faster',
                             'iFormer_m', 'iFormer_m_faster']
    for name, kw in dense.items():
        assert kw['attention'] == 'authors'
        assert kw['window_padding'] == 'zeros'
        assert kw['fused_attn'] == name.endswith('_faster')
        base = dense[name.replace('_faster', '')]
        assert {k: v for k, v in kw.items() if k != 'fused_attn'} == \
            {k: v for k, v in base.items() if k != 'fused_attn'}
    cls = AUTHORS_PRESETS['cls']
    assert cls['iFormer_m']['attention'] == 'global'
    assert cls['iFormer_m_faster'] == dense['iFormer_m_faster']
    # their models/iformer.py builds iFormer_l2_faster with other dims
    assert cls['iFormer_l2_faster']['arch']['dims'] == (48, 128, 256, 448)
    with pytest.raises(ValueError, match="No network 'iFormer_l2_faster'"):
        authors_preset('iFormer_l2_faster')
    with pytest.raises(ValueError, match='source must be one of'):
        authors_preset('iFormer_m', source='det')
    # a preset is a copy: editing it leaves the table alone
    authors_preset('iFormer_m')['arch'] = 'x'
    assert dense['iFormer_m']['arch'] == 'm'


def test_build_authors_preset_layouts():
    m = build_authors_preset('iFormer_m_faster', out_indices=(2, ))
    assert m.fused_attn and m.window_padding == 'zeros'
    assert m.window_chunks == 16 and m.out_indices == (2, )
    s3 = m.stages[2]
    assert s3.layout.partition_before == 9 + 1       # 1st SHMA of stage 3
    assert s3.layout.reverse_before == 9 + 3 * 3 + 2  # after the 4th SHMA
    l2 = build_authors_preset('iFormer_l2_faster', source='cls')
    assert l2.dims == (48, 128, 256, 448)
    s3 = l2.stages[2]
    assert s3.layout.reverse_before == 12 + 3 * 9 + 2  # 10 of 11 windowed
    assert not l2.stages[3].layout.windowed


# -- export: torch.export, ONNX, Core ML --------------------------------------
# A small custom arch with the windowed, padded, masked path (hybrid layout,
# stage 3 at 64x288 is 4x18 -> two padded windows): conversion cost grows
# with the number of ops, and the path under test is the same at any size.
TINY = dict(dims=(16, 16, 32, 32), depths=(1, 1, 7, 3),
            attn_groups=(0, 0, 2, 1), qk_reduction=(0, 0, 2, 2),
            conv_ratio=2, ffn_ratio=2)


def _deployed(fused):
    torch.manual_seed(0)
    net = randomize_bn(IFormer(TINY, attention='hybrid', window_chunks=1,
                               fused_attn=fused)).eval()
    return net.switch_to_deploy()


@pytest.mark.parametrize('fused', [False, True])
def test_exports_to_onnx_with_same_numbers(fused, tmp_path):
    import onnxruntime as ort

    from iformer_mm.deploy.export import export_onnx
    net = _deployed(fused)
    x = torch.randn(1, 3, 64, 288)  # padded windows: the mask is exported
    path = export_onnx(net, x, str(tmp_path / 'm.onnx'),
                       [f'out{i}' for i in range(4)])
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = sess.run(None, {'image': x.numpy()})
    with torch.no_grad():
        want = net(x)
    for a, b in zip(want, got):
        assert (a - torch.from_numpy(b)).abs().max() <= 1e-4 * a.abs().max()


@pytest.mark.slow
def test_fused_coreml_conversion():
    # Conversion only: a Core ML program cannot run on Linux. (The explicit
    # path's conversion is what the latency tool's tests convert.)
    from iformer_mm.deploy.census import op_census
    from iformer_mm.deploy.coreml import convert_exported_program
    from iformer_mm.deploy.export import export_program
    x = torch.randn(1, 3, 64, 288)
    programs = {f: export_program(_deployed(f), x) for f in (False, True)}
    for fused, program in programs.items():
        names = [str(n.target) for n in program.graph.nodes]
        sdpa = [t for t in names if 'scaled_dot_product' in t]
        softmax = [t for t in names if 'softmax' in t]
        assert (len(sdpa), len(softmax)) == ((3, 0) if fused else (0, 3))
    census = op_census(convert_exported_program(programs[True], x.shape, 4))
    ops = census['op_counts']
    # Every SHMA became either Core ML's fused attention or softmax + matmuls
    assert ops.get('scaled_dot_product_attention', 0) + \
        ops.get('softmax', 0) == 3
    assert census['total_ops'] > 0
