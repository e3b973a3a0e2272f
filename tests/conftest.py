"""Shared pytest setup: kept minimal; tests bring their own fixtures."""
from importlib import metadata


def pytest_report_header(config):
    """Print the stack under test (read from metadata, nothing imported)."""
    parts = []
    for dist in ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet',
                 'mmsegmentation', 'mmpretrain', 'numpy', 'coremltools'):
        try:
            parts.append(f'{dist} {metadata.version(dist)}')
        except metadata.PackageNotFoundError:
            parts.append(f'{dist} missing')
    return 'stack: ' + ', '.join(parts)
