"""Window rearrangement with no tensor above rank 5.

The reference is the rank-6 ``view``/``permute`` implementation that the
project used before, written out again here (not imported), together with the
stage's old partition / reverse steps (always rearrange, even a single
window). The new code must give ``torch.equal`` outputs, and its
``torch.export`` graph must hold no tensor of rank > 5.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import iformer_mm  # noqa: F401
from iformer_mm.models.backbones import iformer as ifm
from iformer_mm.models.backbones.iformer import (ARCH_ZOO, IFormer,
                                                 window_partition,
                                                 window_reverse)

from .test_backbone import _stage_shapes, randomize_bn


# -- the old, rank-6 implementation (reference) ------------------------------
def ref_partition(x, ws, chunks=1):
    if chunks > 1:
        return torch.cat([ref_partition(p, ws) for p in x.chunk(chunks, 1)],
                         dim=1)
    b, c, h, w = x.shape
    x = x.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c, ws, ws)


def ref_reverse(windows, ws, h, w, chunks=1):
    if chunks > 1:
        return torch.cat([ref_reverse(p, ws, h, w)
                          for p in windows.chunk(chunks, 1)], dim=1)
    c = windows.shape[1]
    x = windows.view(-1, h // ws, w // ws, c, ws, ws).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, c, h, w)


def ref_stage_partition(self, x):
    """The stage's old ``_partition``: always rearranges; pads, and in
    'mask' mode builds the masks, as before."""
    ws = self.window_size
    b, _, h, w = x.shape
    pad_b, pad_r = (-h) % ws, (-w) % ws
    state = ifm._WindowState(h, w, h + pad_b, w + pad_r)
    if pad_b or pad_r:
        x = F.pad(x, (0, pad_r, 0, pad_b))
        if self.window_padding == 'mask':
            valid = x.new_zeros((b, 1, h + pad_b, w + pad_r))
            valid[:, :, :h, :w] = 1
            state.valid = ref_partition(valid, ws)
            state.key_valid = state.valid.flatten(2).bool()
    return ref_partition(x, ws, self.window_chunks), state


def ref_stage_reverse(self, x, state):
    x = ref_reverse(x, self.window_size, state.padded_height,
                    state.padded_width, self.window_chunks)
    if (state.padded_height, state.padded_width) != (state.height,
                                                     state.width):
        x = x[:, :, :state.height, :state.width].contiguous()
    return x


def _map_sizes(size, arch):
    """(H, W) of the stage-3 and stage-4 maps for an input size."""
    shapes = _stage_shapes(*size, ARCH_ZOO[arch]['dims'])
    return [s[1:] for s in shapes[2:]]


SIZES = [(224, 224), (512, 512), (511, 517), (800, 1333), (512, 683)]


pytestmark = pytest.mark.usefixtures('one_thread')


# -- the functions, on every map shape that occurs --------------------------
def test_partition_reverse_equal_rank6_reference():
    # Every padded stage-3 / stage-4 map of the sizes (the channel
    # count does not matter to the rearrangement; chunking needs 16 | C).
    ws = 16
    maps = set()
    for size in SIZES + [(800, 1344), (64, 288), (32, 272)]:
        for h, w in _map_sizes(size, 'm'):
            maps.add((h + (-h) % ws, w + (-w) % ws))
    for hp, wp in sorted(maps):
        for b in (1, 2):
            x = torch.randn(b, 32, hp, wp)
            for chunks in (1, 16):
                win = window_partition(x, ws, chunks)
                ref = ref_partition(x, ws, chunks)
                assert torch.equal(win, ref), (hp, wp, b, chunks)
                back = window_reverse(win, ws, hp, wp, chunks)
                assert torch.equal(back, ref_reverse(ref, ws, hp, wp, chunks))
                assert torch.equal(back, x)


def test_partition_is_windows_in_order():
    # Independent of both implementations: window k of batch b is the crop
    # at row k // nw, column k % nw (batch first, then row-major).
    ws, b, c, h, w = 4, 2, 3, 8, 12
    x = torch.randn(b, c, h, w)
    win = window_partition(x, ws, chunks=3)
    nh, nw = h // ws, w // ws
    for n in range(b):
        for k in range(nh * nw):
            i, j = divmod(k, nw)
            assert torch.equal(win[n * nh * nw + k],
                               x[n, :, i * ws:(i + 1) * ws,
                                 j * ws:(j + 1) * ws])


# -- the whole network: new code vs the old one ------------------------------
def _old_vs_new(net, x, monkeypatch):
    with torch.no_grad():
        new = net(x)
        with monkeypatch.context() as m:
            m.setattr(ifm.IFormerStage, '_partition', ref_stage_partition)
            m.setattr(ifm.IFormerStage, '_reverse', ref_stage_reverse)
            old = net(x)
    assert len(new) == len(old) == 4
    for i, (a, b) in enumerate(zip(new, old)):
        assert torch.equal(a, b), f'stage {i + 1} differs'


LAYOUTS = ['global', 'window', 'hybrid', 'authors']
#: every arch; the large ones (seconds each) with -m slow
ARCHS = [a if a in ('t', 's', 'm') else pytest.param(a, marks=pytest.mark.slow)
         for a in ARCH_ZOO]


@pytest.mark.parametrize('arch', ARCHS)
def test_network_bit_identical_every_arch(arch, monkeypatch):
    # 32x272: stage 3 is 2x17 -> two padded windows side by side, stage 4
    # one padded window (the skipped rearrangement). Every layout, chunk
    # counts 1 and 16 (S: 8, as 16 does not divide 176). Batch 2 (the
    # two-step path) for T, S, M; batch 1 for the larger ones. T also runs
    # the other padding mode of each layout.
    torch.manual_seed(0)
    net = randomize_bn(IFormer(arch)).eval()
    state = net.state_dict()
    x = torch.randn(2 if arch in ('t', 's', 'm') else 1, 3, 32, 272)
    chunks = 16 if all(d % 16 == 0 for d in ARCH_ZOO[arch]['dims']) else 8
    for i, attention in enumerate(LAYOUTS):
        paddings = [None]
        if arch == 't':
            paddings.append('zeros' if attention != 'authors' else 'mask')
        for padding in paddings:
            with torch.device('meta'):  # no random init: weights come next
                model = IFormer(arch, attention=attention,
                                window_chunks=(1, chunks)[i % 2],
                                window_padding=padding).eval()
            model.load_state_dict(state, assign=True)
            _old_vs_new(model, x, monkeypatch)


@pytest.mark.parametrize('size', SIZES[:3] + [pytest.param(
    s, marks=pytest.mark.slow) for s in SIZES[3:]])
def test_network_bit_identical_m_sizes(size, monkeypatch):
    # iFormer-M at the sizes of the issue, each layout and chunk count
    # spread over the sizes (one network forward pair per size).
    torch.manual_seed(0)
    k = SIZES.index(size)
    attention = LAYOUTS[k % 4]
    chunks = (16, 1)[k % 2]
    net = randomize_bn(IFormer('m', attention=attention,
                               window_chunks=chunks)).eval()
    _old_vs_new(net, torch.randn(1, 3, *size), monkeypatch)


# -- no tensor above rank 5 ----------------------------------------------------
class _RankCensus(TorchDispatchMode):
    """Records the rank of every tensor that an ATen op returns: the nodes
    of the ``torch.export`` graph, without the cost of exporting."""

    def __init__(self):
        super().__init__()
        self.max_rank = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.max_rank = max(self.max_rank, t.dim())
        return out


def _meta_net(arch, attention, size=(512, 512)):
    chunks = 16 if all(d % 16 == 0 for d in ARCH_ZOO[arch]['dims']) else 8
    with torch.device('meta'):
        net = IFormer(arch, attention=attention, window_chunks=chunks).eval()
        x = torch.empty(1, 3, *size)
    return net, x


@pytest.mark.parametrize('arch', ARCHS)
def test_no_tensor_above_rank5_every_arch_and_layout(arch):
    # 512x512: stage 3 is 2x2 windows, stage 4 a single window; 511x517:
    # padded windows. On the meta device: shapes only.
    for attention in LAYOUTS:
        net, _ = _meta_net(arch, attention)
        for size in ((512, 512), (511, 517)):
            with torch.no_grad(), _RankCensus() as census:
                net(torch.empty(1, 3, *size, device='meta'))
            assert census.max_rank <= 5, (arch, attention, size)


def _export_max_rank(exported):
    ranks = []
    for node in exported.graph.nodes:
        val = node.meta.get('val')
        vals = val if isinstance(val, (list, tuple)) else [val]
        ranks += [v.dim() for v in vals if isinstance(v, torch.Tensor)]
    return max(ranks)


@pytest.mark.slow
@pytest.mark.parametrize('arch,attention', [('m', 'hybrid'), ('l', 'authors')])
def test_export_graph_has_no_tensor_above_rank5(arch, attention):
    # The exported graph itself, for the latency tool's default layout and
    # the authors' one, at 512x512 with channel chunking.
    net, x = _meta_net(arch, attention)
    with torch.no_grad():
        exported = torch.export.export(net, (x, ))
    assert _export_max_rank(exported) == 5


def test_rank_census_sees_the_old_rank6_code(monkeypatch):
    # The census catches a rank-6 rearrangement (the old code).
    monkeypatch.setattr(ifm.IFormerStage, '_partition', ref_stage_partition)
    monkeypatch.setattr(ifm.IFormerStage, '_reverse', ref_stage_reverse)
    net, x = _meta_net('t', 'hybrid')
    with torch.no_grad(), _RankCensus() as census:
        net(x)
    assert census.max_rank == 6
