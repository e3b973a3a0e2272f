"""iformer-mm: iFormer backbones (ICLR 2025) for mmdet, mmseg and mmpretrain.

Install the whole stack with ``python tools/install.py`` (it builds mmcv's
ops against your torch and then runs ``pip install -e .`` for this package).
``install_requires`` is deliberately empty: letting pip resolve torch or mmcv
here would pull a torch build that may not match your torchvision, or try to
build mmcv in an isolated environment without torch.
"""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version():
    scope = {}
    with open(osp.join(HERE, 'iformer_mm', 'version.py')) as fh:
        exec(fh.read(), scope)
    return scope['__version__']


def read_readme():
    path = osp.join(HERE, 'README.md')
    if not osp.exists(path):
        return ''
    with open(path, encoding='utf-8') as fh:
        return fh.read()


setup(
    name='iformer-mm',
    version=read_version(),
    description='iFormer backbones (ICLR 2025) for OpenMMLab 2.0: mmdet, '
    'mmsegmentation and mmpretrain',
    long_description=read_readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['iformer_mm', 'iformer_mm.*']),
    include_package_data=True,
    python_requires='>=3.9',
    install_requires=[],
    extras_require={
        # what tools/install.py adds on top of torch, mmcv and OpenMMLab
        'deploy': ['coremltools==9.0', 'numpy>=1.26,<2.4', 'onnx',
                   'onnxruntime'],
        'tests': ['pytest', 'timm'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False,
)
