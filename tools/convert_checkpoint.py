#!/usr/bin/env python
"""Convert an iFormer checkpoint (authors' release or timm) for OpenMMLab.

Reads with ``weights_only=True`` (only the types found in the release files
are allowed), renames the keys and writes a plain ``state_dict`` file:

* ``--target mmpretrain`` (default): ``backbone.*`` + ``head.*`` for an
  ``ImageClassifier`` with ``IFormerClsHead``, loads with no missing keys;
* ``--target backbone``: ``backbone.*`` only, for mmdet / mmseg
  (``load_from``) or for ``init_cfg=dict(type='Pretrained', ...)``.

Example::

    python tools/convert_checkpoint.py iFormer_m.pth iformer_m_mmpretrain.pth
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('src', help='release or timm checkpoint (path or URL)')
    p.add_argument('dst', help='output file')
    p.add_argument('--target', choices=('mmpretrain', 'backbone'),
                   default='mmpretrain')
    args = p.parse_args()

    import torch
    from iformer_mm.models.checkpoint import (detect_format,
                                              load_checkpoint_file,
                                              to_openmmlab, unwrap_state_dict)
    raw = unwrap_state_dict(load_checkpoint_file(args.src))
    fmt = detect_format(raw)
    state = to_openmmlab(raw, with_head=args.target == 'mmpretrain')
    if osp.abspath(args.src) == osp.abspath(args.dst):
        sys.exit('error: refusing to overwrite the source checkpoint; '
                 'choose another output path.')
    torch.save(dict(state_dict=state,
                    meta=dict(converted_from=osp.basename(args.src),
                              source_format=fmt)), args.dst)
    n_backbone = sum(k.startswith('backbone.') for k in state)
    print(f'{args.src} ({fmt} format) -> {args.dst}: {n_backbone} backbone '
          f'tensors, {len(state) - n_backbone} others')


if __name__ == '__main__':
    main()
