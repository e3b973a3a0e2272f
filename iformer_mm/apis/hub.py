"""Models by name, from the OpenMMLab model index (``model-index.yml``).

    >>> import iformer_mm
    >>> iformer_mm.list_models('mask-rcnn*')
    ['mask-rcnn_iformer-l2_fpn_1x_coco', ...]
    >>> model = iformer_mm.get_model('mask-rcnn_iformer-m_fpn_1x_coco')
    >>> iformer_mm.get_config('maskrcnn_iformer_m_coco')  # its alias
    '.../configs/mask-rcnn_iformer-m_fpn_1x_coco.py'

A name is a model's ``Name`` in a ``configs/*/metafile.yml``, its
``Alias`` (the older config name) or the stem of a file in ``configs/``.
The index is read from ``iformer_mm/.mim`` (installed package, as mim does)
or from the source checkout.
"""
from __future__ import annotations

import fnmatch
import os.path as osp
from typing import Dict, List, Optional

from ..errors import UserError

PKG_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))


class ModelNotFoundError(UserError, KeyError):
    """No model of that name in the model index nor in ``configs/``."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ''


def index_root() -> str:
    """Folder holding ``model-index.yml`` (and ``configs/``)."""
    for root in (osp.join(PKG_DIR, '.mim'), osp.dirname(PKG_DIR)):
        if osp.isfile(osp.join(root, 'model-index.yml')):
            return root
    raise FileNotFoundError(
        'model-index.yml not found in iformer_mm/.mim nor in the source '
        'checkout: reinstall with pip install -e . (it links configs, tools '
        'and the model index into iformer_mm/.mim)')


def load_index(root: Optional[str] = None) -> Dict[str, dict]:
    """``{Name: model entry}`` of every metafile the index imports.

    Each entry gets ``Config`` as an absolute path and ``Collection`` (the
    collection's dict, if any).
    """
    import yaml

    root = root or index_root()
    with open(osp.join(root, 'model-index.yml')) as fh:
        index = yaml.safe_load(fh) or {}
    models = {}
    for rel in index.get('Import', []):
        with open(osp.join(root, rel)) as fh:
            meta = yaml.safe_load(fh) or {}
        collections = {c['Name']: c for c in meta.get('Collections') or []}
        for m in meta.get('Models') or []:
            entry = dict(m)
            entry['Config'] = osp.join(root, m['Config'])
            entry['Metafile'] = rel
            entry['Collection'] = collections.get(m.get('In Collection'))
            if entry['Name'] in models:
                raise ValueError(f'model {entry["Name"]!r} is listed twice '
                                 f'({models[entry["Name"]]["Metafile"]}, '
                                 f'{rel})')
            models[entry['Name']] = entry
    return models


def list_models(pattern: str = '*') -> List[str]:
    """Names in the model index matching a shell pattern, sorted."""
    return sorted(n for n in load_index() if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> dict:
    """The metafile entry of ``name`` (``Name``, ``Config``, ``Metadata``,
    ``Results``, ``Weights``); a config not in the index gets only
    ``Name`` and ``Config``.

    Raises:
        ModelNotFoundError: unknown name (the message lists close names).
    """
    models = load_index()
    if name in models:
        return models[name]
    if name.endswith('.py') and osp.isfile(name):
        # a config file path, as mmpretrain's get_model takes
        stem = osp.splitext(osp.basename(name))[0]
        return {'Name': stem, 'Config': osp.abspath(name)}
    for entry in models.values():
        if entry.get('Alias') == name or \
                osp.splitext(osp.basename(entry['Config']))[0] == name:
            return entry
    root = index_root()
    for cand in (osp.join(root, 'configs', name + '.py'),
                 osp.join(root, 'configs', 'toy', name + '.py')):
        if osp.isfile(cand):
            return {'Name': name, 'Config': cand}
    import difflib
    close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.4)
    raise ModelNotFoundError(
        f'no model named {name!r} in the model index or configs/'
        + (f'; did you mean {", ".join(close)}?' if close else '')
        + ' (iformer_mm.list_models() lists them; mim search iformer_mm)')


def get_config(name: str) -> str:
    """Path of the config file of model ``name``."""
    return model_info(name)['Config']


def get_model(name: str, checkpoint: Optional[str] = None,
              device: str = 'cpu', cfg_options: Optional[dict] = None):
    """Build model ``name`` from its config, in eval mode.

    Args:
        name (str): a model name (``mask-rcnn_iformer-m_fpn_1x_coco``), its
            alias, a config file stem (``maskrcnn_iformer_m_coco``) or the
            path of a config file (``configs/toy/fpn_iformer_t_toy.py``).
        checkpoint (str, optional): a local checkpoint to load (e.g. the
            file the entry's ``Weights`` URL points to); without it the
            model is randomly initialised and nothing is downloaded.
        device (str): where to put the model. Defaults to ``'cpu'``.
        cfg_options (dict, optional): overrides merged into the config.

    Returns:
        The model (an mmdet ``MaskRCNN``, mmseg ``EncoderDecoder`` or
        mmpretrain ``ImageClassifier``), with the config as ``model.cfg``.
        Building it needs that task's library (mmdet, mmseg, mmpretrain).
    """
    from ..config import load_config
    from .build import build_model

    cfg = load_config(get_config(name), cfg_options)
    return build_model(cfg, checkpoint=checkpoint, device=device)
