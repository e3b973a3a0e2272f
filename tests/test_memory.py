"""TensorMemoryTracker counts live storages once, views included."""
import torch

from iformer_mm.utils import TensorMemoryTracker


def test_peak_and_written_bytes():
    x = torch.zeros(1024)  # created outside: not counted
    with TensorMemoryTracker() as mem:
        a = x + 1                  # 4 KiB live
        view = a.view(32, 32)      # same storage: no new bytes
        b = view * 2               # 8 KiB live
        del a, view
        c = b + 1                  # a is gone: still 8 KiB live
        del b
        d = c.t().contiguous()     # 8 KiB live again
    assert mem.allocated_bytes == 4 * 4096
    assert mem.peak_bytes == 2 * 4096
    assert mem.live_bytes == 2 * 4096
    del c, d


def test_attention_matrix_shows_in_peak():
    q = torch.randn(1, 256, 16)
    with TensorMemoryTracker() as mem:
        attn = (q @ q.transpose(1, 2)).softmax(-1)
    assert mem.peak_bytes >= 256 * 256 * 4
    del attn
