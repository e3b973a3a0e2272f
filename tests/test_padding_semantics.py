"""Window padding semantics against an independent per-window reference.

``window_padding='zeros'`` (the authors' released code): every window of the
zero-padded map is computed on its own, padded zeros included, through every
block between the partition and the reverse. ``'mask'``: every window is
computed on its valid tokens only, as a smaller map. The reference slices
the windows itself and runs the blocks one window at a time, with no mask
and no window rearrangement.

Cost: the maps are the real stage-3 / stage-4 maps of each input size, with
the real M / L / L2 blocks (random weights, non-trivial BN statistics). To
stay fast on two shared cores, the blocks that run before the first window
are cut off (they never see a window), the stage's forward stops at the
reverse, and the reference checks the four corner windows (which hold every
kind of padding).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import iformer_mm  # noqa: F401
from iformer_mm.models.backbones.iformer import ARCH_ZOO, IFormer

from .test_backbone import _stage_shapes, randomize_bn


pytestmark = pytest.mark.usefixtures('one_thread')

WS = 16
# The sizes and their (stage-3, stage-4) maps; 800x1333 and 800x1344
# share their maps, so they are run once.
IMAGE_SIZES = {(512, 512): ((32, 32), (16, 16)),
               (800, 1333): ((50, 84), (25, 42)),
               (800, 1344): ((50, 84), (25, 42)),
               (512, 683): ((32, 43), (16, 22)),
               (511, 517): ((32, 33), (16, 17))}
MAPS = sorted({v for v in IMAGE_SIZES.values()})


def test_image_sizes_give_these_maps():
    for size, maps in IMAGE_SIZES.items():
        shapes = _stage_shapes(*size, ARCH_ZOO['m']['dims'])
        assert tuple(s[1:] for s in shapes[2:]) == maps


class _Skip(nn.Module):
    def forward(self, x, *args):
        return x


class _Stop(Exception):
    pass


def _windowed_stage(net, index):
    """Stage ``index`` of ``net`` with the blocks before the first window cut
    off; returns the stage and the block indices between partition and
    reverse, which the reference runs window by window."""
    stage = net.stages[index]
    layout = stage.layout
    stage.downsample = nn.Identity()
    for j in range(layout.partition_before - 1):  # all but the first CPE
        stage.blocks[j] = _Skip()
    return stage, list(range(layout.partition_before, layout.reverse_before))


def _run_to_reverse(stage, x):
    """The stage's own forward, up to the reverse: (partition input, reverse
    output)."""
    seen = {}
    part, rev = stage._partition, stage._reverse

    def partition(t):
        seen['in'] = t
        return part(t)

    def reverse(t, state):
        seen['out'] = rev(t, state)
        raise _Stop
    stage._partition, stage._reverse = partition, reverse
    try:
        stage(x)
    except _Stop:
        pass
    finally:
        del stage._partition, stage._reverse
    return seen['in'], seen['out']


def _reference_window(stage, region, x_in, i, j, mode):
    """Window (i, j) computed on its own: the zero-padded crop ('zeros') or
    the crop of valid tokens ('mask')."""
    h, w = x_in.shape[2:]
    if mode == 'zeros':
        padded = F.pad(x_in, (0, (-w) % WS, 0, (-h) % WS))
        t = padded[:, :, i * WS:(i + 1) * WS, j * WS:(j + 1) * WS]
    else:
        t = x_in[:, :, i * WS:(i + 1) * WS, j * WS:(j + 1) * WS]
    for k in region:
        t = stage.blocks[k](t)
    hv, wv = min(WS, h - i * WS), min(WS, w - j * WS)
    return t[:, :, :hv, :wv]


def _check(arch, mode, attention, stage_index, hw):
    torch.manual_seed(0)
    net = randomize_bn(IFormer(arch, attention=attention,
                               window_padding=mode, window_chunks=16),
                       seed=1).eval()
    assert net.window_padding == mode
    stage, region = _windowed_stage(net, stage_index)
    x = torch.randn(1, net.dims[stage_index], *hw)
    with torch.no_grad():
        x_in, out = _run_to_reverse(stage, x)
        assert out.shape[2:] == x_in.shape[2:] == x.shape[2:]
        nh, nw = -(-hw[0] // WS), -(-hw[1] // WS)
        for i, j in {(0, 0), (0, nw - 1), (nh - 1, 0), (nh - 1, nw - 1)}:
            ref = _reference_window(stage, region, x_in, i, j, mode)
            got = out[:, :, i * WS:i * WS + ref.shape[2],
                      j * WS:j * WS + ref.shape[3]]
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            assert err <= 1e-4, (arch, mode, hw, (i, j), err)


@pytest.mark.parametrize('maps', MAPS, ids=lambda m: f'{m[0][0]}x{m[0][1]}')
@pytest.mark.parametrize('arch', ['m', 'l', pytest.param(
    'l2', marks=pytest.mark.slow)])
def test_zeros_padding_is_the_authors_per_window_semantics(arch, maps):
    # The authors' layout: stage 3 windowed, stage 4 global.
    _check(arch, 'zeros', 'authors', 2, maps[0])


@pytest.mark.parametrize('maps', MAPS, ids=lambda m: f'{m[0][0]}x{m[0][1]}')
@pytest.mark.parametrize('arch', ['m', 'l', pytest.param(
    'l2', marks=pytest.mark.slow)])
def test_mask_padding_is_attention_on_valid_tokens(arch, maps):
    # 'window': every SHMA of stages 3 and 4 in windows, so both stages'
    # padded windows are checked.
    _check(arch, 'mask', 'window', 2, maps[0])
    _check(arch, 'mask', 'window', 3, maps[1])


def test_the_two_semantics_differ_only_where_padded():
    # Same weights: at 512x512 nothing is padded and the two agree exactly;
    # at 511x517 they differ (the authors' zeros take part).
    torch.manual_seed(0)
    a = randomize_bn(IFormer('t', attention='authors',
                             window_padding='mask')).eval()
    b = IFormer('t', attention='authors').eval()
    assert b.window_padding == 'zeros'
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 256, 512)   # stage 3: 16x32, no padding
        assert all(torch.equal(p, q) for p, q in zip(a(x), b(x)))
        x = torch.randn(1, 3, 200, 300)   # stage 3: 13x19, padded
        pa, pb = a(x), b(x)
    assert torch.equal(pa[1], pb[1])
    assert not torch.allclose(pa[2], pb[2], atol=1e-3)


def test_window_padding_argument():
    assert IFormer('t').window_padding == 'mask'
    assert IFormer('t', attention='hybrid').window_padding == 'mask'
    assert IFormer('t', attention='authors').window_padding == 'zeros'
    net = IFormer('t', attention='authors', window_padding='mask')
    assert all(s.window_padding == 'mask' for s in net.stages)
    for bad in ('zero', 'pad', True, 0):
        with pytest.raises(ValueError,
                           match=r"window_padding must be one of \('mask', "
                                 r"'zeros'\)"):
            IFormer('t', window_padding=bad)
    from iformer_mm.models.backbones.iformer import IFormerStage
    with pytest.raises(ValueError, match='window_padding must be one of'):
        IFormerStage(32, 32, 3, 1, 2, 2, 2, [0.] * 3, 0.,
                     attention='window', window_padding='none')


# -- the whole network, every stage -------------------------------------------
def _reference_stage(stage, x, mode):
    """A stage run block by block; between partition and reverse every
    window is a separate map: the zero-padded crop ('zeros') or the crop of
    valid tokens ('mask'). No mask, no rearrangement."""
    x = stage.downsample(x)
    layout = stage.layout
    windows = None
    for k, block in enumerate(stage.blocks):
        if k == layout.partition_before:
            h, w = x.shape[2:]
            src = F.pad(x, (0, (-w) % WS, 0, (-h) % WS)) if mode == 'zeros' \
                else x
            windows = [[src[:, :, i:i + WS, j:j + WS]
                        for j in range(0, w, WS)] for i in range(0, h, WS)]
        elif k == layout.reverse_before and windows is not None:
            x = torch.cat([torch.cat([t[:, :, :min(WS, h - i * WS),
                                          :min(WS, w - j * WS)]
                                      for j, t in enumerate(row)], dim=3)
                           for i, row in enumerate(windows)], dim=2)
            windows = None
        if windows is None:
            x = block(x)
        else:
            windows = [[block(t) for t in row] for row in windows]
    if windows is not None:
        x = torch.cat([torch.cat([t[:, :, :min(WS, h - i * WS),
                                      :min(WS, w - j * WS)]
                                  for j, t in enumerate(row)], dim=3)
                       for i, row in enumerate(windows)], dim=2)
    return x


@pytest.mark.parametrize('mode,attention', [('zeros', 'authors'),
                                            ('mask', 'window')])
def test_whole_network_every_stage_at_511x517(mode, attention):
    # iFormer-M end to end: stage 3 is 32x33 (padded to 32x48), stage 4
    # 16x17 (padded to 32x32 in the 'window' layout).
    torch.manual_seed(0)
    net = randomize_bn(IFormer('m', attention=attention, window_padding=mode,
                               window_chunks=16), seed=2).eval()
    x = torch.randn(1, 3, 511, 517)
    with torch.no_grad():
        outs = net(x)
        ref = net.stem(x)
        for i, stage in enumerate(net.stages):
            ref = _reference_stage(stage, ref, mode)
            err = ((outs[i] - ref).abs().max() / ref.abs().max()).item()
            assert err <= 1e-4, (i, err)
