"""Demo inputs: unreadable images in a folder are skipped with a warning and
the rest processed; a named unreadable image, or a folder of nothing
readable, is one clear error (exit 2); ``--debug`` shows the traceback."""
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

from iformer_mm.apis.inference import collect_images
from iformer_mm.errors import InputError, UserError

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _folder(tmp_path):
    good = [str(tmp_path / f'good{i}.png') for i in range(2)]
    for path in good:
        cv2.imwrite(path, np.full((40, 40, 3), 100, np.uint8))
    (tmp_path / 'empty.jpg').write_bytes(b'')
    (tmp_path / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'x' * 50)
    (tmp_path / 'notes.txt').write_text('not an image, not an image name')
    return good


def test_folder_skips_unreadable_images_with_a_warning(tmp_path):
    good = _folder(tmp_path)
    warnings = []
    images = collect_images(str(tmp_path), warn=warnings.append)
    assert images == sorted(good)
    assert len(warnings) == 2
    assert any('empty.jpg' in w and '0 bytes' in w for w in warnings)
    assert any('corrupt.png' in w and 'not a decodable image' in w
               for w in warnings)


def test_named_unreadable_image_and_empty_folder_are_errors(tmp_path):
    _folder(tmp_path)
    with pytest.raises(InputError, match='empty.jpg.*0 bytes'):
        collect_images(str(tmp_path / 'empty.jpg'))
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'x.jpg').write_bytes(b'')
    with pytest.raises(UserError, match=r'No readable image.*1 skipped'):
        collect_images(str(bad), warn=lambda m: None)
    with pytest.raises(InputError, match='not found'):
        collect_images(str(tmp_path / 'missing.png'))


def _demo(args, cwd):
    return subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'demo.py')] + args,
        cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_processes_the_readable_rest(tmp_path):
    good = _folder(tmp_path)
    cfg = osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py')
    proc = _demo([cfg, str(tmp_path), '--out-dir', str(tmp_path / 'out')],
                 tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'skipped' in proc.stderr and 'empty.jpg' in proc.stderr
    written = sorted(p.name for p in (tmp_path / 'out' / 'vis').iterdir())
    assert len(written) == len(good)

    # A user mistake: one line and exit 2; --debug adds the traceback.
    proc = _demo([cfg, str(tmp_path / 'empty.jpg')], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert 'not a readable image' in lines[0] and 'Traceback' not in \
        proc.stderr
    proc = _demo([cfg, str(tmp_path / 'empty.jpg'), '--debug'], tmp_path)
    assert proc.returncode != 0 and 'Traceback' in proc.stderr
