"""coremltools: conversion, saved packages and the runtime check.

coremltools converts on any OS, but only macOS has the Core ML runtime that
compiles and runs a package. This module keeps that line sharp: conversion
and reading packages everywhere, ``predict`` only where
:func:`coreml_runtime_status` says the runtime is there. What a converted
program contains (the op census, the package check) is
:mod:`.census`'s; the timing is :mod:`.macos`'s.

Conversion goes through ``torch.export`` (coremltools' TorchScript path
fails with numpy >= 2.4), then ``ct.convert`` to an ML program with FP16
compute precision and an explicit minimum iOS deployment target.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

COMPUTE_UNITS = ('ALL', 'CPU_ONLY', 'CPU_AND_GPU', 'CPU_AND_NE')
IOS_TARGETS = ('iOS16', 'iOS17', 'iOS18')
DEFAULT_IOS_TARGET = 'iOS17'
INPUT_NAME = 'image'
INPUT_TYPES = ('tensor', 'image')
#: The ImageNet normalisation every backbone here is trained with (RGB,
#: 0-255 pixels), as in the configs' data preprocessors.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: MLComputePlan (op placement) needs macOS 14.4 (API_AVAILABLE macos(14.4)).
PLACEMENT_MACOS = (14, 4)


class ImageNormalisation:
    """``(pixel - mean[c]) / std[c]`` split between a Core ML ``ImageType``
    and the network.

    ``ct.ImageType`` applies ``scale * pixel + bias[c]`` with one scale for
    all channels (coremltools 9 rejects a per-channel scale list in the
    torch.export path), so the image type gets ``scale = 1 / s`` with ``s``
    the mean of the stds and ``bias[c] = -mean[c] / s``, and, where the stds
    differ, the network starts with one per-channel multiply by
    ``s / std[c]``. The result is exactly the normalised input.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError('An RGB normalisation needs 3 means and 3 '
                             f'positive stds, got {mean}, {std}.')
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(v) for v in std)
        self.common = sum(self.std) / 3

    @property
    def scale(self) -> float:
        return 1.0 / self.common

    @property
    def bias(self) -> List[float]:
        return [-m / self.common for m in self.mean]

    @property
    def channel_factors(self) -> Optional[List[float]]:
        """The in-network per-channel multiply, or None when not needed."""
        factors = [self.common / v for v in self.std]
        return None if max(factors) == min(factors) else factors

    def describe(self) -> str:
        text = (f'ImageType RGB 0-255, scale 1/{self.common:.3f}, bias '
                '[' + ', '.join(f'{b:.4f}' for b in self.bias) + ']')
        if self.channel_factors:
            text += ('; one per-channel multiply ['
                     + ', '.join(f'{f:.4f}' for f in self.channel_factors)
                     + '] in the network (Core ML takes one scale)')
        return text


class CoreMLToolsMissing(ImportError):
    """coremltools is needed but not importable."""


# coremltools modules that draw tqdm bars during conversion (per op, per
# pass); the tool has its own progress display.
_TQDM_USERS = (('coremltools.converters.mil.mil.passes.pass_pipeline', 'tqdm'),
               ('coremltools.converters.mil.frontend.torch.ops', '_tqdm'))


@contextlib.contextmanager
def _quiet_coremltools():
    """Silence coremltools' chatter (untested torch version, missing native
    runtime on Linux, per-pass progress bars): the tool reports what
    matters itself."""
    logger = logging.getLogger('coremltools')
    level = logger.level
    logger.setLevel(logging.ERROR)
    patched = []
    for module_name, attr in _TQDM_USERS:
        module = sys.modules.get(module_name)
        bar = getattr(module, attr, None)
        if bar is not None:
            patched.append((module, attr, bar))
            setattr(module, attr, functools.partial(bar, disable=True))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            yield
    finally:
        logger.setLevel(level)
        for module, attr, bar in patched:
            setattr(module, attr, bar)


def import_coremltools():
    """Return the ``coremltools`` module or raise a clear error."""
    try:
        with _quiet_coremltools():
            import coremltools as ct  # noqa: F401
    except ImportError as exc:
        raise CoreMLToolsMissing(
            'coremltools is not installed, so nothing can be converted to '
            f'Core ML ({exc}). Install it with `pip install coremltools` '
            '(or pass --no-coreml to benchmark the proxies only).') from exc
    return ct


def version_tuple(text: str) -> Tuple[int, ...]:
    """``'14.2.1'`` -> ``(14, 2, 1)``; the leading numeric parts only."""
    parts = []
    for part in text.split('.'):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def macos_version() -> Tuple[int, ...]:
    """This Mac's macOS version, ``()`` on another OS."""
    return version_tuple(platform.mac_ver()[0])


def coreml_runtime_status() -> Tuple[bool, str]:
    """``(available, reason)``: can this machine run Core ML ``predict``?
    Below macOS 14.4 the runtime times but cannot read op placement, and
    the reason says so."""
    system = platform.system()
    if system != 'Darwin':
        return False, (f'Core ML cannot run on {system}: the Core ML runtime '
                       'exists only on Apple platforms; the .mlpackage is '
                       'converted and validated here, but no Core ML latency '
                       'is measured.')
    try:
        ct = import_coremltools()
    except CoreMLToolsMissing as exc:
        return False, str(exc)
    try:
        from coremltools.models import model as _model
        if getattr(_model, '_MLModelProxy', None) is None:
            raise ImportError('coremltools.libcoremlpython did not load')
    except ImportError as exc:
        return False, (f'Core ML runtime bindings of coremltools '
                       f'{ct.__version__} are unavailable on this Mac: {exc}.')
    line = f'Core ML runtime available (macOS {platform.mac_ver()[0]}).'
    if macos_version() < PLACEMENT_MACOS:
        line += (' Op placement needs macOS 14.4 or later (MLComputePlan): '
                 'it is skipped here, the timing is not.')
    return True, line


def _target(ct, name: str):
    if name not in IOS_TARGETS:
        raise ValueError(f'Unknown iOS deployment target {name!r}; choose '
                         f'one of {IOS_TARGETS}.')
    return getattr(ct.target, name)


def convert_exported_program(exported, input_shape: Sequence[int],
                             num_outputs: int,
                             ios_target: str = DEFAULT_IOS_TARGET,
                             fp16: bool = True,
                             image: Optional[ImageNormalisation] = None):
    """Convert a ``torch.export.ExportedProgram`` to an ML program.

    Outputs stay FP32 tensors (what an app reads); the input is an FP32
    tensor, or with ``image`` an RGB ``ct.ImageType`` whose scale and bias
    do the normalisation (export the network wrapped in
    :class:`ImageInput` then). Compute and weights are FP16 when ``fp16``.
    """
    ct = import_coremltools()
    outputs = [ct.TensorType(name=f'out{i}', dtype=np.float32)
               for i in range(num_outputs)]
    if image is None:
        input_type = ct.TensorType(name=INPUT_NAME, shape=tuple(input_shape),
                                   dtype=np.float32)
    else:
        input_type = ct.ImageType(name=INPUT_NAME, shape=tuple(input_shape),
                                  scale=image.scale, bias=image.bias,
                                  color_layout=ct.colorlayout.RGB)
    with _quiet_coremltools():
        mlmodel = ct.convert(
            exported,
            convert_to='mlprogram',
            inputs=[input_type],
            outputs=outputs,
            compute_precision=(ct.precision.FLOAT16 if fp16 else
                               ct.precision.FLOAT32),
            minimum_deployment_target=_target(ct, ios_target),
            skip_model_load=True)
    return mlmodel


def convert_module(model, example, ios_target: str = DEFAULT_IOS_TARGET,
                   fp16: bool = True):
    """Export a backbone (outputs flattened into a tuple) with
    ``torch.export`` on ``example`` and convert it for an FP32 tensor input
    of that shape. Returns ``(mlmodel, exported program)``."""
    import torch

    from .export import TupleOutputs, export_program
    model = TupleOutputs(model).eval()
    with torch.no_grad():
        num_outputs = len(model(example))
    exported = export_program(model, example)
    return convert_exported_program(exported, example.shape, num_outputs,
                                    ios_target, fp16=fp16), exported


def save_package(mlmodel, path: str) -> str:
    if not path.endswith('.mlpackage'):
        raise ValueError(f'A Core ML ML program is saved as .mlpackage, got '
                         f'{path!r}.')
    if os.path.isdir(path):
        import shutil
        shutil.rmtree(path)
    mlmodel.save(path)
    return path


def package_weights_dir(path: str) -> Optional[str]:
    weights = os.path.join(path, 'Data', 'com.apple.CoreML', 'weights')
    return weights if os.path.isdir(weights) else None


def package_size_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def load_package_spec(path: str):
    """The protobuf spec of a saved package, without compiling it."""
    ct = import_coremltools()
    if not os.path.isdir(path):
        raise FileNotFoundError(f'No .mlpackage at {path!r}.')
    with _quiet_coremltools():
        return ct.utils.load_spec(path)


def coreml_inputs(inputs: np.ndarray,
                  image: Optional[ImageNormalisation] = None
                  ) -> Dict[str, Any]:
    """The prediction feed of a package: the FP32 tensor, or for an image
    input the RGB picture whose normalisation is ``inputs``."""
    if image is None:
        return {INPUT_NAME: inputs.astype(np.float32)}
    from PIL import Image
    pixels = (inputs[0].transpose(1, 2, 0) * np.array(image.std) +
              np.array(image.mean))
    return {INPUT_NAME: Image.fromarray(
        np.clip(np.rint(pixels), 0, 255).astype(np.uint8), 'RGB')}
