"""Shared pytest setup: the fixtures several test files use, the skip
policy, and the ``slow`` marker.

Skip policy: a test may only be skipped for a documented platform limit,
with a reason that starts with ``platform:`` (e.g. ``platform: needs
macOS``). Any other skip means a missing dependency or a hidden failure;
with ``IFORMER_STRICT_SKIPS=1`` (set by ``.ci/run``; on by default when
``CI=true``) it fails the run, and
the summary lists each offending test with its reason.
"""
import os
from importlib import metadata

import pytest

ALLOWED_SKIP_PREFIX = 'platform:'
_unexplained = []


def pytest_report_header(config):
    """Print the stack under test (read from metadata, nothing imported)."""
    parts = []
    for dist in ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet',
                 'mmsegmentation', 'mmpretrain', 'numpy', 'coremltools',
                 'timm', 'onnxruntime', 'executorch'):
        try:
            parts.append(f'{dist} {metadata.version(dist)}')
        except metadata.PackageNotFoundError:
            parts.append(f'{dist} missing')
    return 'stack: ' + ', '.join(parts)


def skip_reason(report) -> str:
    """The reason text of a skipped test report ('' if there is none)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr or '')
    return reason[len('Skipped: '):] if reason.startswith('Skipped: ') \
        else reason


def is_explained(reason: str) -> bool:
    return reason.strip().startswith(ALLOWED_SKIP_PREFIX)


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, 'wasxfail'):
        reason = skip_reason(report)
        if not is_explained(reason):
            _unexplained.append((report.nodeid, reason))


def _strict() -> bool:
    flag = os.environ.get('IFORMER_STRICT_SKIPS')
    if flag is not None:
        return flag not in ('', '0')
    return os.environ.get('CI', '').lower() in ('1', 'true')


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _unexplained:
        return
    title = ('unexplained skips (fail: IFORMER_STRICT_SKIPS=1)'
             if _strict() else 'unexplained skips')
    terminalreporter.section(title)
    for nodeid, reason in _unexplained:
        terminalreporter.write_line(f'{nodeid}: {reason}')


def pytest_sessionfinish(session, exitstatus):
    if _unexplained and _strict() and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope='module')
def one_thread():
    """torch on one intra-op thread for a module (``pytestmark =
    pytest.mark.usefixtures('one_thread')``): on shared cores a second
    thread costs far more than it gains."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
