"""Catch config mistakes before anything is built.

mmengine builds a hook, a loop or a model from a dict and passes its keys
as keyword arguments, so a misspelled key either fails late (a
``CheckpointHook`` stores unknown keys and hands them to the first save) or
not at all (a top-level key nobody reads). :func:`check_config` reads the
config the way the runner will and stops with a
:class:`~iformer_mm.errors.ConfigError` that names the key and the closest
valid one:

* every hook (``default_hooks``, ``custom_hooks``), every loop
  (``train_cfg``, ``val_cfg``, ``test_cfg``) and the model, its backbone and
  its neck: each key must be an argument of the registered class
  (``inspect.signature``; a ``**kwargs`` is followed to where it goes);
* an unregistered ``type`` in those places;
* the iFormer backbone: ``arch``, ``attention``, ``out_indices`` (in stage
  order, no duplicates) and the neck's / head's ``in_channels`` against the
  channels of the selected stages.

A top-level key close to one the runner reads (``trian_cfg``) is returned
as a warning: configs may define their own variables.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ..errors import ConfigError
from ..config import SCOPES, init_scope
from ..errors import closest, did_you_mean

#: Top-level keys that the tools or mmengine read besides the arguments of
#: ``Runner.__init__``.
EXTRA_TOP_LEVEL_KEYS = (
    'runner_type', 'model_wrapper_cfg', 'find_unused_parameters',
    'tta_model', 'tta_pipeline', 'custom_imports', 'default_scope',
    'work_dir', 'launcher', 'resume', 'load_from', 'auto_scale_lr',
    'sync_bn', 'dist_params', 'log_level', 'compile', 'strategy', 'cfg',
    'train_pipeline', 'test_pipeline', 'val_pipeline')

#: The attention layouts IFormer accepts as one string.
ATTENTION_NAMES = ('global', 'window', 'hybrid', 'authors')

#: Arguments the runner passes itself when it builds a loop.
_LOOP_INJECTED = ('runner', 'dataloader', 'evaluator')

# Classes whose ``**kwargs`` go to a known callable: (module, class
# qualname) -> (module, attribute path of the callable, arguments the class
# passes itself, which the user may not).
_KWARGS_TARGETS: Dict[Tuple[str, str], Tuple[str, str, Tuple[str, ...]]] = {
    # mmengine: CheckpointHook(**kwargs) -> runner.save_checkpoint(...,
    # **kwargs) at every save.
    ('mmengine.hooks.checkpoint_hook', 'CheckpointHook'): (
        'mmengine.runner', 'Runner.save_checkpoint',
        ('out_dir', 'filename', 'file_client_args', 'save_optimizer',
         'save_param_scheduler', 'meta', 'by_epoch', 'backend_args')),
    # mmpretrain: VisualizationHook(**kwargs) -> visualizer.visualize_cls.
    ('mmpretrain.engine.hooks.visualization_hook', 'VisualizationHook'): (
        'mmpretrain.visualization', 'UniversalVisualizer.visualize_cls',
        ('image', 'data_sample', 'step', 'name', 'show', 'out_file')),
}

_TERMINAL_BASES = ('builtins.object', 'mmengine.hooks.hook.Hook',
                   'torch.nn.modules.module.Module',
                   'mmengine.model.base_module.BaseModule')


# --------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------
def _qualified(cls) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def _named_params(func, skip_first: bool) -> Tuple[List[str], bool]:
    params = list(inspect.signature(func).parameters.values())
    if skip_first and params:
        params = params[1:]
    named = [p.name for p in params if p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    return named, var_kw


def _resolve_attr(module: str, path: str):
    obj = importlib.import_module(module)
    for part in path.split('.'):
        obj = getattr(obj, part)
    return obj


def accepted_keys(cls) -> Optional[Set[str]]:
    """The keyword arguments ``cls(**kwargs)`` accepts, or ``None`` when a
    ``**kwargs`` goes somewhere that cannot be known.

    ``**kwargs`` is followed along the MRO (``super().__init__(**kwargs)``)
    and through :data:`_KWARGS_TARGETS`; a ``**kwargs`` that reaches a
    terminal base (``object``, ``Hook``, ``nn.Module``) without a known
    target means the class keeps the keys for itself: unknown.
    """
    keys: Set[str] = set()
    own_inits = [c for c in cls.__mro__ if '__init__' in vars(c)]
    for i, klass in enumerate(own_inits):
        target = _KWARGS_TARGETS.get((klass.__module__, klass.__qualname__))
        try:
            named, var_kw = _named_params(vars(klass)['__init__'], True)
        except (TypeError, ValueError):
            return None
        keys.update(named)
        if target is not None:
            module, path, passed = target
            try:
                fn = _resolve_attr(module, path)
                fnamed, fvar = _named_params(fn, True)
            except (ImportError, AttributeError, TypeError, ValueError):
                return None
            if fvar:
                return None
            keys.update(k for k in fnamed if k not in passed)
            return keys
        if not var_kw:
            return keys
        nxt = own_inits[i + 1] if i + 1 < len(own_inits) else object
        if _qualified(nxt) in _TERMINAL_BASES:
            return None
    return keys  # pragma: no cover - object always ends the MRO


# --------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------
def _registry_names(reg) -> Set[str]:
    names: Set[str] = set()
    while reg is not None:
        names.update(reg.module_dict)
        reg = reg.parent
    return names


def lookup(registry, type_name: str, scope: Optional[str], where: str):
    """The class registered as ``type_name``; a ConfigError naming
    ``where`` and the closest registered name if there is none."""
    with registry.switch_scope_and_registry(scope) as reg:
        cls = reg.get(type_name)
        if cls is None:
            short = type_name.split('.')[-1]
            raise ConfigError(
                f'{where}: type {type_name!r} is not registered in '
                f'{reg.scope}::{reg.name}'
                f'{did_you_mean(short, _registry_names(reg))}')
    return cls


def check_keys(node: dict, cls, where: str,
               ignore: Sequence[str] = ()) -> None:
    """Every key of ``node`` must be an argument of ``cls``."""
    if not inspect.isclass(cls):
        return
    valid = accepted_keys(cls)
    if valid is None:
        return
    valid = set(valid) - set(ignore)
    for key in node:
        if key in ('type', '_scope_', '_delete_') or key in valid:
            continue
        raise ConfigError(
            f'{where}: unknown key {key!r} for {cls.__name__}'
            f'{did_you_mean(key, valid)} (valid: {", ".join(sorted(valid))})')


# --------------------------------------------------------------------------
# The parts of a config
# --------------------------------------------------------------------------
def check_top_level(cfg) -> List[str]:
    """Warnings for top-level keys close to, but not, a key the runner
    reads."""
    from mmengine.runner import Runner
    known = set(_named_params(Runner.__init__, True)[0])
    known.update(EXTRA_TOP_LEVEL_KEYS)
    warnings = []
    for key in cfg.keys():
        if key in known or key.startswith('_'):
            continue
        hit = closest(key, known, cutoff=0.8)
        if hit:
            warnings.append(
                f'config: top-level key {key!r} is not read by the runner; '
                f'did you mean {hit[0]!r}? (ignored)')
    return warnings


def check_hooks(cfg, scope: Optional[str]) -> None:
    from mmengine.registry import HOOKS
    hooks = cfg.get('default_hooks', None) or {}
    items = [(f'default_hooks.{name}', h) for name, h in hooks.items()]
    items += [(f'custom_hooks[{i}]', h)
              for i, h in enumerate(cfg.get('custom_hooks', None) or [])]
    for where, hook in items:
        if not isinstance(hook, dict) or not isinstance(hook.get('type'),
                                                        str):
            continue
        cls = lookup(HOOKS, hook['type'], scope, where)
        check_keys(hook, cls, where)


def _default_loop(name: str, loop: dict):
    from mmengine.runner import (EpochBasedTrainLoop, IterBasedTrainLoop,
                                 TestLoop, ValLoop)
    if name == 'train_cfg':
        if 'by_epoch' not in loop:
            return None  # the runner itself rejects it
        return EpochBasedTrainLoop if loop['by_epoch'] else \
            IterBasedTrainLoop
    return ValLoop if name == 'val_cfg' else TestLoop


def check_loops(cfg, scope: Optional[str]) -> None:
    from mmengine.registry import LOOPS
    for name in ('train_cfg', 'val_cfg', 'test_cfg'):
        loop = cfg.get(name, None)
        if not isinstance(loop, dict) or not loop:
            continue
        if isinstance(loop.get('type'), str):
            cls = lookup(LOOPS, loop['type'], scope, name)
            ignore = _LOOP_INJECTED
        elif 'type' in loop:
            continue  # a class or a callable: nothing to look up
        else:
            cls = _default_loop(name, loop)
            if cls is None:
                continue
            loop = {k: v for k, v in loop.items() if k != 'by_epoch'}
            ignore = _LOOP_INJECTED
        check_keys(loop, cls, name, ignore=ignore)


def _is_iformer(cls) -> bool:
    from ..models.backbones.iformer import IFormer
    return inspect.isclass(cls) and issubclass(cls, IFormer)


def check_iformer(backbone: dict, where: str = 'model.backbone'
                  ) -> Optional[Tuple[int, ...]]:
    """Check an IFormer config; return the channels of its outputs, in
    order (``None`` if the arch is a dict we cannot read)."""
    from ..models.backbones.iformer import ARCH_ZOO
    arch = backbone.get('arch', 't')
    dims = None
    if isinstance(arch, str):
        if arch.lower() not in ARCH_ZOO:
            raise ConfigError(
                f'{where}.arch={arch!r} is not an iFormer arch'
                f'{did_you_mean(arch, ARCH_ZOO)} (one of '
                f'{", ".join(ARCH_ZOO)}, or a dict)')
        dims = tuple(ARCH_ZOO[arch.lower()]['dims'])
    elif isinstance(arch, dict) and len(arch.get('dims', ())) == 4:
        dims = tuple(arch['dims'])
    attention = backbone.get('attention', 'global')
    names = ', '.join(repr(a) for a in ATTENTION_NAMES)
    if isinstance(attention, str):
        if attention not in ATTENTION_NAMES:
            raise ConfigError(
                f'{where}.attention={attention!r} is not an attention layout'
                f'{did_you_mean(attention, ATTENTION_NAMES)} (one of {names}, '
                f'or per stage a list of them / dict(windowed=[...]))')
    elif isinstance(attention, (list, tuple)):
        for i, spec in enumerate(attention):
            if isinstance(spec, str) and spec not in ATTENTION_NAMES[:3]:
                raise ConfigError(
                    f'{where}.attention[{i}]={spec!r} is not a per-stage '
                    f'layout{did_you_mean(spec, ATTENTION_NAMES[:3])} '
                    f"(per stage: 'global', 'window', 'hybrid' or "
                    f"dict(windowed=[...]); 'authors' names a whole network)")
    out_indices = backbone.get('out_indices', (0, 1, 2, 3))
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    out_indices = tuple(out_indices)
    if not out_indices or not all(
            isinstance(i, int) and -4 <= i < 4 for i in out_indices):
        raise ConfigError(f'{where}.out_indices={out_indices} must be a '
                          f'non-empty subset of (0, 1, 2, 3)')
    stages = tuple(i % 4 for i in out_indices)
    if list(stages) != sorted(set(stages)):
        raise ConfigError(
            f'{where}.out_indices={out_indices} must list stages in '
            f'increasing order without duplicates (the backbone returns them '
            f'in stage order); write {tuple(sorted(set(stages)))}')
    if dims is None:
        return None
    return tuple(dims[i] for i in stages)


def _check_channels(model: dict, channels: Tuple[int, ...]) -> None:
    neck = model.get('neck', None)
    if isinstance(neck, dict) and 'in_channels' in neck:
        in_ch = neck['in_channels']
        if isinstance(in_ch, int):
            in_ch = [in_ch]
        if list(in_ch) != list(channels):
            raise ConfigError(
                f'model.neck.in_channels={list(in_ch)} does not fit the '
                f'backbone: its out_indices give {len(channels)} feature '
                f'map(s) of {list(channels)} channels; set '
                f'model.neck.in_channels={list(channels)} or change '
                f'model.backbone.out_indices')
        return
    head = model.get('head', None)
    if isinstance(head, dict) and isinstance(head.get('in_channels'), int) \
            and (neck is None or (isinstance(neck, dict) and neck.get(
                'type') == 'GlobalAveragePooling')):
        if head['in_channels'] != channels[-1]:
            raise ConfigError(
                f"model.head.in_channels={head['in_channels']} does not fit "
                f'the backbone: its last output has {channels[-1]} channels')


def check_model(cfg, scope: Optional[str]) -> None:
    from mmengine.registry import MODELS
    model = cfg.get('model', None)
    if not isinstance(model, dict) or not isinstance(model.get('type'), str):
        return
    if 'module' in model and isinstance(model['module'], dict):
        # A TTA wrapper: check the wrapped model.
        check_keys(model, lookup(MODELS, model['type'], scope, 'model'),
                   'model')
        model = model['module']
        if not isinstance(model.get('type'), str):
            return
    cls = lookup(MODELS, model['type'], scope, 'model')
    check_keys(model, cls, 'model')
    channels = None
    backbone = model.get('backbone', None)
    if isinstance(backbone, dict) and isinstance(backbone.get('type'), str):
        bcls = lookup(MODELS, backbone['type'], scope, 'model.backbone')
        check_keys(backbone, bcls, 'model.backbone')
        if _is_iformer(bcls):
            channels = check_iformer(backbone)
    neck = model.get('neck', None)
    if isinstance(neck, dict) and isinstance(neck.get('type'), str):
        ncls = lookup(MODELS, neck['type'], scope, 'model.neck')
        check_keys(neck, ncls, 'model.neck')
    if channels is not None:
        _check_channels(model, channels)


def check_config(cfg, scope: Optional[str] = None) -> List[str]:
    """Check ``cfg`` before a runner is built from it.

    Args:
        cfg (Config): the config, with the command-line options merged.
        scope (str, optional): its ``default_scope``; read from ``cfg`` by
            default.

    Returns:
        list[str]: warnings (top-level keys that look misspelt).

    Raises:
        ConfigError: an unknown key or type in a hook, a loop, the model,
            its backbone or neck; an IFormer backbone that does not fit.
    """
    scope = scope or cfg.get('default_scope', None)
    if scope in SCOPES:
        init_scope(scope, set_default=False)
    warnings = check_top_level(cfg)
    check_hooks(cfg, scope)
    check_loops(cfg, scope)
    check_model(cfg, scope)
    return warnings


__all__ = ['check_config', 'accepted_keys', 'check_iformer', 'lookup',
           'check_keys', 'ATTENTION_NAMES']
