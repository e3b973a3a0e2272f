"""Behaviour of the backbone's small parts.

Each test checks a behaviour a user depends on against an independent
reference written here: BN folding with small running variances and a
non-default ``eps`` (where dropping ``eps`` or mixing up mean / variance is
visible), DropPath (identity in eval mode, per-sample and unbiased in
training), layer scale, freezing and ``norm_eval`` across repeated
``train()`` calls, ``out_indices`` normalisation, the stochastic-depth
schedule and weight initialisation. All run on tiny inputs in well under a
second each.
"""
import pytest
import torch
import torch.nn as nn

import iformer_mm  # noqa: F401
from iformer_mm.models.backbones import iformer as ifm
from iformer_mm.models.backbones.iformer import IFormer


pytestmark = pytest.mark.usefixtures('one_thread')


def set_bn_stats(bn, seed, eps=0.05):
    """Means far from 0, variances far from 1 (some below eps), big eps."""
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    bn.eps = eps
    bn.running_mean.copy_(torch.randn(n, generator=g) * 2 + 0.5)
    bn.running_var.copy_(torch.rand(n, generator=g) * 0.1 + 0.001)
    bn.weight.data.copy_(torch.randn(n, generator=g) + 1.5)
    bn.bias.data.copy_(torch.randn(n, generator=g))
    return bn


def ref_bn(x, bn, dim=1):
    """BatchNorm in eval mode, written out: (x - mean) / sqrt(var + eps)."""
    shape = [1] * x.dim()
    shape[dim] = -1

    def r(t):
        return t.detach().reshape(shape)
    return (x - r(bn.running_mean)) / torch.sqrt(r(bn.running_var) + bn.eps) \
        * r(bn.weight) + r(bn.bias)


def test_conv_norm_fuse_equals_conv_then_bn_written_out():
    torch.manual_seed(0)
    cn = ifm.ConvNorm(4, 6, 3, 2, 1).eval()
    set_bn_stats(cn.bn, 1)
    x = torch.randn(2, 4, 9, 11)
    ref = ref_bn(nn.functional.conv2d(x, cn.c.weight, None, 2, 1), cn.bn)
    with torch.no_grad():
        fused = cn.fuse()
        torch.testing.assert_close(cn(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)
    assert isinstance(fused, nn.Conv2d) and fused.bias is not None
    assert (fused.stride, fused.padding) == ((2, 2), (1, 1))
    # Without eps the folded scale would be off by up to sqrt(1 + eps/var).
    no_eps = cn.bn.weight / torch.sqrt(cn.bn.running_var)
    scale = fused.weight.flatten(1).norm(dim=1) / cn.c.weight.flatten(1).norm(
        dim=1)
    assert not torch.allclose(scale, no_eps.abs(), rtol=1e-2)


def test_depthwise_conv_norm_and_rep_cpe_fuse():
    torch.manual_seed(0)
    cpe = ifm.RepCPE(5, 3).eval()
    set_bn_stats(cpe.cpe.module.bn, 2)
    x = torch.randn(1, 5, 7, 6)
    conv = cpe.cpe.module.c
    ref = x + ref_bn(nn.functional.conv2d(x, conv.weight, None, 1, 1,
                                          groups=5), cpe.cpe.module.bn)
    with torch.no_grad():
        torch.testing.assert_close(cpe(x), ref, atol=1e-5, rtol=1e-5)
        fused = cpe.fuse()
        torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)
    assert fused.groups == 5
    # other odd kernels keep the map's size ("same" padding) and fuse
    for k in (5, 7):
        cpe = ifm.RepCPE(5, k).eval()
        set_bn_stats(cpe.cpe.module.bn, 2)
        with torch.no_grad():
            out = cpe(x)
            assert out.shape == x.shape
            torch.testing.assert_close(cpe.fuse()(x), out, atol=1e-5,
                                       rtol=1e-5)


def test_norm_linear_fuse_equals_bn_then_linear_written_out():
    torch.manual_seed(0)
    head = ifm.NormLinear(6, 3).eval()
    set_bn_stats(head.bn, 3)
    with torch.no_grad():
        head.l.bias.copy_(torch.randn(3))
    x = torch.randn(4, 6)
    ref = ref_bn(x, head.bn) @ head.l.weight.detach().T + head.l.bias.detach()
    with torch.no_grad():
        torch.testing.assert_close(head(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(head.fuse()(x), ref, atol=1e-5, rtol=1e-5)


def test_norm_linear_initialisation():
    torch.manual_seed(0)
    head = ifm.NormLinear(512, 400)
    assert torch.count_nonzero(head.l.bias) == 0
    assert head.l.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_deploy_network_with_small_variances_and_large_eps():
    """Whole network: fused equals unfused where eps matters."""
    torch.manual_seed(0)
    arch = dict(dims=(8, 16, 16, 32), depths=(1, 1, 4, 3),
                attn_groups=(0, 0, 1, 1), qk_reduction=(0, 0, 2, 2),
                conv_ratio=2, ffn_ratio=2)
    net = IFormer(arch, attention='hybrid', window_size=4,
                  layer_scale_init_value=0.5).eval()
    for i, m in enumerate(net.modules()):
        if isinstance(m, nn.BatchNorm2d):
            set_bn_stats(m, i, eps=0.01)
            m.running_mean.mul_(0.1)
            m.running_var.add_(0.05)
    x = torch.randn(1, 3, 80, 72)
    with torch.no_grad():
        ref = net(x)
        net.switch_to_deploy()
        out = net(x)
    assert not net.training
    for a, b in zip(ref, out):  # rounding grows with the activations
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


# the network's DropPath (mmcv's on the full stack) and the light install's
DROP_PATHS = [ifm.DropPath, ifm._DropPath]


def test_drop_path_comes_from_mmcv_on_the_full_stack():
    pytest.importorskip('mmcv', reason='platform: light install, no mmcv')
    from mmcv.cnn.bricks.drop import DropPath
    assert ifm.DropPath is DropPath
    net = IFormer('t', drop_path_rate=0.2)
    assert any(isinstance(m, DropPath) for m in net.modules())


@pytest.mark.parametrize('drop_path', DROP_PATHS)
def test_drop_path_is_identity_in_eval_and_deterministic(drop_path):
    dp = drop_path(0.9).eval()
    x = torch.randn(16, 3, 4, 4)
    assert torch.equal(dp(x), x)
    assert torch.equal(drop_path(0.).train()(x), x)
    assert dp.drop_prob == 0.9
    net = IFormer('t', drop_path_rate=0.5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = net(x), net(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize('drop_path', DROP_PATHS)
def test_drop_path_in_training_drops_whole_samples_unbiased(drop_path):
    torch.manual_seed(0)
    dp = drop_path(0.25).train()
    x = torch.ones(4000, 2, 3)
    y = dp(x)
    assert y.shape == x.shape
    per_sample = y.flatten(1)
    # every sample is either dropped entirely or kept and scaled by 1/keep
    assert torch.all((per_sample == 0).all(1) |
                     torch.isclose(per_sample, torch.tensor(1 / 0.75)).all(1))
    dropped = (per_sample == 0).all(1).float().mean().item()
    assert dropped == pytest.approx(0.25, abs=0.03)
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)


def test_residual_applies_layer_scale_and_drop_path():
    body = nn.Conv2d(2, 2, 1)
    res = ifm.Residual(body, drop_path=0.5, layer_scale_init_value=0.3,
                       dim=2).eval()
    x = torch.randn(1, 2, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(res(x), x + 0.3 * body(x))
    assert isinstance(res.drop_path, ifm.DropPath)
    assert isinstance(ifm.Residual(body).drop_path, nn.Identity)
    assert ifm.Residual(body).gamma is None


def test_drop_path_schedule_is_linear_over_all_blocks():
    net = IFormer('t', drop_path_rate=0.3)
    total = sum(ifm.ARCH_ZOO['t']['depths'])
    # RepCPE blocks carry no drop path; their rates are skipped above
    expected = [0.3 * i / (total - 1) for i in range(total)]
    got = []
    i = 0
    for stage in net.stages:
        for block, role in zip(stage.blocks, stage.roles):
            if role != 'cpe':
                dp = block.mixer.drop_path
                got.append((i, getattr(dp, 'drop_prob', 0.0)))
            i += 1
    for idx, rate in got:
        assert rate == pytest.approx(expected[idx], abs=1e-9)
    assert got[-1][1] == pytest.approx(0.3)


@pytest.mark.parametrize('frozen', [-1, 0, 1, 4])
def test_frozen_stages_survive_repeated_train_calls(frozen):
    net = IFormer('t', frozen_stages=frozen)
    parts = [net.stem] + list(net.stages)
    n_frozen = frozen + 1  # -1: none, 0: the stem, k: stem + k stages
    for _ in range(2):
        net.train()
        for i, part in enumerate(parts):
            frozen_part = i < n_frozen
            assert part.training is not frozen_part, (frozen, i)
            assert all(p.requires_grad is not frozen_part
                       for p in part.parameters()), (frozen, i)
    net.eval()
    assert not any(m.training for m in net.modules())


def test_frozen_stem_keeps_statistics_and_gets_no_gradient():
    net = IFormer('t', frozen_stages=0).train()
    bn = net.stem.conv1.bn
    before = bn.running_mean.clone()
    outs = net(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    assert torch.equal(bn.running_mean, before)
    assert net.stem.conv1.c.weight.grad is None
    assert net.stages[0].blocks[0].mixer.module[0].c.weight.grad is not None
    # the first trainable stage does update its statistics
    bn0 = net.stages[0].blocks[0].mixer.module[0].bn
    assert bn0.num_batches_tracked.item() == 1


def test_norm_eval_false_trains_bn_and_eval_mode_still_works():
    net = IFormer('t', norm_eval=False).train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training for m in bns)
    net = IFormer('t', norm_eval=True)
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(not m.training for m in net.modules()
               if isinstance(m, nn.BatchNorm2d))
    # non-BN modules are still in training mode (drop path would act)
    assert net.stages[2].training and net.training


def test_out_indices_normalised_and_early_exit():
    assert IFormer('t', out_indices=(1, -1)).out_indices == (1, 3)
    with pytest.raises(ValueError, match='increasing without duplicates'):
        IFormer('t', out_indices=(-1, 1, 1))  # never silently reordered
    assert IFormer('t', out_indices=2).out_indices == (2, )
    with pytest.raises(ValueError, match='out_indices'):
        IFormer('t', out_indices=(-5, ))
    with pytest.raises(ValueError, match='out_indices'):
        IFormer('t', out_indices=(1.0, ))
    net = IFormer('t', out_indices=(0, 3)).eval()
    full = IFormer('t').eval()
    full.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs, ref = net(x), full(x)
    assert len(outs) == 2
    assert torch.equal(outs[0], ref[0]) and torch.equal(outs[1], ref[3])
    # stages after the last requested one are not run
    calls = []
    net = IFormer('t', out_indices=(1, ))
    net.stages[2].register_forward_hook(lambda *a: calls.append(1))
    net(x)
    assert calls == []


def test_init_weights_truncated_normal_std_002():
    torch.manual_seed(0)
    net = IFormer('t')
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0)
    net.init_weights()
    w = torch.cat([m.weight.flatten() for m in net.modules()
                   if isinstance(m, nn.Conv2d)])
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    assert w.abs().max().item() < 0.2


def test_window_size_and_chunks_validation():
    for bad in (True, 2.0, -3):
        with pytest.raises(ValueError, match='window_size'):
            IFormer('t', window_size=bad)
    with pytest.raises(ValueError, match='window_chunks'):
        IFormer('t', window_chunks=3)
    assert IFormer('t', window_size=1).window_size == 1
    with pytest.raises(ValueError, match='frozen_stages'):
        IFormer('t', frozen_stages=-2)
    assert IFormer('t', frozen_stages=4).frozen_stages == 4


def test_shma_equals_the_papers_formula_written_out():
    """softmax(Q^T K / sqrt(C/R)), V A^T gated by G, with a key mask."""
    torch.manual_seed(0)
    dim, r = 8, 2
    shma = ifm.SHMA(dim, r).eval()
    g = torch.Generator().manual_seed(1)
    for m in shma.modules():  # moderate statistics: softmax not saturated
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.running_mean.copy_(torch.randn(m.num_features, generator=g)
                                 * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g)
                                + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g)
                                + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g)
                              * 0.1)
    x = torch.randn(2, dim, 3, 4)
    valid = torch.ones(2, 1, 12, dtype=torch.bool)
    valid[1, 0, 5:] = False

    def cn(m, t):
        return ref_bn(nn.functional.conv2d(t, m.c.weight), m.bn)
    vg = torch.sigmoid(cn(shma.v_gate, x)).flatten(2)
    v, g = vg[:, :dim], vg[:, dim:]
    q, k = cn(shma.q, x).flatten(2), cn(shma.k, x).flatten(2)
    logits = torch.einsum('bcn,bcm->bnm', q, k) / (dim / r) ** 0.5
    for mask in (None, valid):
        lg = logits if mask is None else logits.masked_fill(~mask,
                                                            float('-inf'))
        a = lg.softmax(-1)
        assert a.max() < 0.9  # a scale error would show
        out = torch.einsum('bcm,bnm->bcn', v, a) * g
        ref = cn(shma.proj, out.reshape(2, dim, 3, 4))
        with torch.no_grad():
            torch.testing.assert_close(shma(x, mask), ref, atol=1e-5,
                                       rtol=1e-4)


def test_authors_attention_defaults_to_zeros_padding_for_any_equal_str():
    # a string built at run time (e.g. read from a config) is not the
    # interned literal; the default must follow its value
    name = ''.join(['auth', 'ors'])
    net = IFormer('m', attention=name, out_indices=(0, ))
    assert net.window_padding == 'zeros'
    assert IFormer('m', attention='window').window_padding == 'mask'


@pytest.mark.parametrize('mode', ['global', 'window', 'hybrid'])
def test_attention_modes_are_matched_by_value(mode):
    built = ''.join(list(mode))  # equal, but not the interned literal
    a = IFormer('t', attention=mode)
    b = IFormer('t', attention=built)
    assert [s.layout for s in a.stages] == [s.layout for s in b.stages]


@pytest.mark.parametrize('dims', [(16, 8, 16, 8), (16, 16, 32, 32)])
def test_custom_arch_downsamples_every_stage(dims):
    """Shrinking or equal consecutive widths must not drop the stride-2
    downsample (equal ones once did)."""
    arch = dict(dims=dims, depths=(1, 1, 3, 3),
                attn_groups=(0, 0, 1, 1), qk_reduction=(0, 0, 2, 2),
                conv_ratio=2, ffn_ratio=2)
    net = IFormer(arch).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (dims[0], 16, 16), (dims[1], 8, 8), (dims[2], 4, 4), (dims[3], 2, 2)]
    assert isinstance(net.stages[0].downsample, nn.Identity)
    assert all(isinstance(s.downsample, ifm.ConvNorm)
               for s in net.stages[1:])


def test_a_stage_without_downsample_keeps_its_width():
    with pytest.raises(ValueError, match='keeps its width'):
        ifm.IFormerStage(8, 16, 3, 1, 2, 2, 2, [0.] * 3, 0.,
                         downsample=False)


@pytest.mark.parametrize('layer', ['SHMA', 'SHMABlock', 'IFormerStage',
                                   'IFormer'])
def test_every_level_defaults_to_the_explicit_attention(layer, monkeypatch):
    """The documented default at every level, from SHMA up to the network:
    no SDPA unless asked for (the explicit form is the authors' own, bit
    for bit)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        spy)
    build = dict(
        SHMA=lambda **kw: ifm.SHMA(16, 2, **kw),
        SHMABlock=lambda **kw: ifm.SHMABlock(16, 2, **kw),
        IFormerStage=lambda **kw: ifm.IFormerStage(
            16, 16, 3, 1, 2, 2, 2, [0.] * 3, 0., **kw),
        IFormer=lambda **kw: IFormer('t', out_indices=(3, ), **kw))[layer]
    x = torch.randn(1, 3, 64, 64) if layer == 'IFormer' else \
        torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        build().eval()(x)
        assert calls == []
        build(fused_attn=True).eval()(x)
    assert calls


def test_layout_reverse_is_matched_by_value_and_follows_the_last_shma():
    def layout(reverse, windowed=(True, True, True)):
        spec = dict(windowed=list(windowed), reverse=reverse)
        return IFormer('t', attention=['global', 'global', spec, 'global']
                       ).stages[2].layout
    built = ''.join(list('before_next_attn'))
    # T stage 3: 6 prefix convs, 3 groups; every SHMA windowed: the windows
    # are reversed right after the last SHMA whichever rule is asked for
    assert layout('before_next_attn') == layout(built) == \
        layout('after_attn') == ifm.StageLayout(6 + 1, 6 + 3 * 2 + 2)
    half = layout(built, (True, True, False))
    assert half == ifm.StageLayout(6 + 1, 6 + 3 * 2 + 1)


def test_channel_chunking_splits_every_rearrangement():
    """Appendix F: with ``chunks`` the transposes work on C/chunks channels
    (the point of chunking for deployment); the result is unchanged."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Permutes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.channels = []  # channels of each permuted tensor

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.permute.default:
                self.channels.append(args[0].shape[0])  # [C, nh, ws, nw, ws]
            return func(*args, **(kwargs or {}))
    x = torch.randn(1, 8, 6, 9)
    ws, chunks = 3, 4
    with Permutes() as rec:
        w = ifm.window_partition(x, ws, chunks)
    assert rec.channels == [8 // chunks] * chunks
    with Permutes() as rec_r:
        y = ifm.window_reverse(w, ws, 6, 9, chunks)
    assert len(rec_r.channels) == chunks  # [nh, nw, C, ws, ws] each
    assert torch.equal(y, x)
    assert torch.equal(w, ifm.window_partition(x, ws, 1))


def test_checkpointed_stage_after_frozen_stem_still_gets_gradients():
    torch.manual_seed(0)
    a = IFormer('t', frozen_stages=0, out_indices=(0, )).train()
    b = IFormer('t', frozen_stages=0, out_indices=(0, ), with_cp=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    a(x)[0].square().sum().backward()
    b(x)[0].square().sum().backward()
    for (n, pa), pb in zip(a.stages[0].named_parameters(),
                           b.stages[0].parameters()):
        assert pb.grad is not None, n
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-5, rtol=1e-4)


def test_fuse_works_where_autograd_is_on():
    """fuse() is called on trained modules, often outside torch.no_grad()
    (a deploy script, mmengine's model.eval()): it must not record or trip
    autograd (an in-place write on a parameter would raise), and the fused
    layer has plain trainable leaves."""
    torch.manual_seed(0)
    layers = [(ifm.ConvNorm(4, 6, 3, 1, 1), torch.randn(2, 4, 5, 5)),
              (ifm.NormLinear(6, 3), torch.randn(2, 6)),
              (ifm.RepCPE(5, 3), torch.randn(2, 5, 7, 6))]
    assert torch.is_grad_enabled()
    for layer, x in layers:
        layer.eval()
        fused = layer.fuse()
        for p in fused.parameters():
            assert p.is_leaf and p.grad_fn is None and p.requires_grad
        with torch.no_grad():
            torch.testing.assert_close(fused(x), layer(x), atol=1e-5,
                                       rtol=1e-5)
