"""One error convention for every tool under ``tools/``.

A user's mistake (a missing file, a wrong checkpoint, a config typo) ends
the tool with **one line on stderr and exit code 2**; ``--debug`` (or the
environment variable ``IFORMER_MM_DEBUG=1``) prints the traceback as well.
Anything else is a bug and keeps its traceback (exit code 1).

Usage, at the bottom of a tool::

    from iformer_mm.engine.errors_cli import run_tool

    if __name__ == '__main__':
        sys.exit(run_tool(main))

``main`` takes ``argv`` (a list without the program name) or nothing; it
returns an exit code or ``None`` (0). What counts as a user mistake:

* :class:`iformer_mm.errors.UserError` and its subclasses (``ConfigError``,
  ``CheckpointError``, ...): raise these from new code;
* ``DatasetNotFoundError`` and other ``FileNotFoundError`` /
  ``NotADirectoryError`` / ``IsADirectoryError`` / ``PermissionError``;
* a config file with a Python syntax error (mmengine's ``SyntaxError``) or
  that mmengine cannot parse;
* an unknown ``type`` in a registry (mmengine's ``KeyError``), given with
  the closest registered names;
* an unknown keyword argument of a registered class (``TypeError``), given
  with the closest valid argument.

This module imports only the standard library at import time, so that the
light (deploy) install can use it.
"""
from __future__ import annotations

import inspect
import os
import os.path as osp
import re
import sys
import traceback
from typing import Callable, List, Optional, Sequence

from ..errors import UserError, closest, did_you_mean  # noqa: F401

DEBUG_FLAG = '--debug'
DEBUG_ENV = 'IFORMER_MM_DEBUG'
DEBUG_HELP = ('show the full traceback of an error (user mistakes are '
              'otherwise reported in one line, exit code 2)')

_REGISTRY_KEY = re.compile(
    r"^'?(?P<type>[\w.]+) is not in the (?:(?P<scope>[\w.]+)::)?"
    r"(?P<registry>[\w ]+) registry")
_UNEXPECTED_KW = re.compile(
    r"(?P<cls>\w+)\.__init__\(\) got an unexpected keyword argument "
    r"'(?P<key>\w+)'")


def add_debug_argument(parser) -> None:
    """Document ``--debug`` in an ``argparse`` parser (:func:`run_tool`
    handles the flag itself, so the parser need not)."""
    parser.add_argument(DEBUG_FLAG, action='store_true', help=DEBUG_HELP)


def _one_line(text: str) -> str:
    """Fold a (possibly multi-line) message into one line.

    Lines that draw a directory tree, and the heading line that introduces
    them, are dropped: they do not survive folding.
    """
    lines = [ln.strip() for ln in str(text).splitlines()]
    kept = []
    for i, ln in enumerate(lines):
        if not ln or any(ch in ln for ch in '├└│─'):
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ''
        if ln.endswith(':') and any(ch in nxt for ch in '├└│─'):
            continue
        kept.append(ln)
    return ' '.join(kept) if kept else str(text).strip()


def _registries(name: Optional[str] = None) -> List:
    """Every mmengine registry (the roots and all their scopes' children),
    or those called ``name``; ``[]`` without mmengine."""
    try:
        import mmengine.registry as mreg
    except ImportError:  # pragma: no cover - light install without mmengine
        return []
    found, stack = [], [v for v in vars(mreg).values()
                        if isinstance(v, mreg.Registry)]
    while stack:
        reg = stack.pop()
        if all(reg is not r for r in found):
            found.append(reg)
            stack.extend(reg.children.values())
    return [r for r in found if name is None or r.name == name.strip()]


def _registry_candidates(registry_name: str) -> List[str]:
    """Every name registered in the registries called ``registry_name``."""
    return sorted({n for reg in _registries(registry_name)
                   for n in reg.module_dict})


def _class_from_registries(name: str):
    """A class registered as ``name`` in any scope of any registry."""
    return next((reg.module_dict[name] for reg in _registries()
                 if name in reg.module_dict), None)


def _config_syntax_error(exc: BaseException) -> bool:
    if not isinstance(exc, SyntaxError):
        return False
    return 'config' in str(exc).lower() or (
        exc.filename is not None and not str(exc.filename).startswith(
            osp.dirname(osp.dirname(osp.abspath(__file__)))))


def user_error_message(exc: BaseException) -> Optional[str]:
    """The one-line message for a user mistake, ``None`` for anything else
    (a bug, which keeps its traceback)."""
    if isinstance(exc, UserError):
        return _one_line(str(exc))
    if isinstance(exc, (FileNotFoundError, NotADirectoryError,
                        IsADirectoryError, PermissionError)):
        if exc.filename is not None and exc.strerror:
            return f'{exc.strerror}: {exc.filename!r}'
        return _one_line(str(exc))
    if _config_syntax_error(exc):
        msg = _one_line(str(exc))
        return msg if 'syntax' in msg.lower() else f'syntax error: {msg}'

    try:
        from mmengine.config.utils import ConfigParsingError
    except ImportError:  # pragma: no cover
        ConfigParsingError = ()  # noqa: N806
    if ConfigParsingError and isinstance(exc, ConfigParsingError):
        return _one_line(f'config: {exc}')
    if isinstance(exc, KeyError) and exc.args:
        m = _REGISTRY_KEY.match(str(exc.args[0]))
        if m:
            typ = m.group('type')
            where = (f"{m.group('scope')}::" if m.group('scope') else '') + \
                m.group('registry')
            hint = did_you_mean(typ.split('.')[-1], _registry_candidates(
                m.group('registry')))
            return (f"config: type {typ!r} is not registered in the {where} "
                    f"registry{hint} (check the spelling, or the "
                    f"custom_imports that register it)")
    if isinstance(exc, TypeError):
        m = _UNEXPECTED_KW.search(str(exc))
        if m:
            hint = ''
            cls = _class_from_registries(m.group('cls'))
            if cls is not None:
                try:
                    params = inspect.signature(cls.__init__).parameters
                    hint = did_you_mean(m.group('key'), params)
                except (TypeError, ValueError):  # pragma: no cover
                    pass
            return (f"config: {m.group('cls')} has no argument "
                    f"{m.group('key')!r}{hint}")
    return None


def _debug_requested(argv: List[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, '') not in (
        '', '0')


def debug_requested() -> bool:
    """Whether this process was asked for tracebacks (``--debug`` on its
    command line or ``IFORMER_MM_DEBUG=1``): for tools that report some
    errors themselves."""
    return _debug_requested(list(sys.argv[1:]))


def _prog_name() -> str:
    return osp.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'tool'


def run_tool(main_fn: Callable, argv: Optional[Sequence[str]] = None,
             prog: Optional[str] = None) -> int:
    """Run a tool's ``main_fn`` with the error convention of the tools.

    Args:
        main_fn: the tool's entry point, taking ``argv`` or nothing.
        argv (Sequence[str], optional): arguments without the program name;
            ``sys.argv[1:]`` by default. ``--debug`` is removed from them.
        prog (str, optional): name used in the error line; the script's
            file name by default.

    Returns:
        int: the exit code: ``main_fn``'s, 2 for a user mistake.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    prog = prog or _prog_name()
    try:
        params = inspect.signature(main_fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        params = {}
    try:
        if params:
            code = main_fn(argv)
        else:
            sys.argv = [sys.argv[0] if sys.argv else prog] + argv
            code = main_fn()
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted below
        message = user_error_message(exc)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        hint = '' if debug else ' (--debug for the traceback)'
        print(f'{prog}: error: {message}{hint}', file=sys.stderr, flush=True)
        return getattr(exc, 'exit_code', 2) if isinstance(
            exc, UserError) else 2
    return 0 if code is None else int(code)


__all__ = ['run_tool', 'user_error_message', 'add_debug_argument',
           'closest', 'did_you_mean', 'DEBUG_FLAG']
