"""iformer-mm: iFormer backbones (ICLR 2025) for mmdet, mmseg and mmpretrain.

Dependencies live in ``requirements/*.txt``; the versions tested together in
``constraints.txt``. What pip can resolve is declared here:

* ``pip install -e .``           IFormer, checkpoint conversion (torch, mmengine)
* ``pip install -e ".[deploy]"`` + Core ML / ONNX export and the latency tool
* ``.[det]``, ``.[seg]``, ``.[cls]`` mmdet / mmsegmentation / mmpretrain;
  these need mmcv with compiled ops, which pip cannot build against your
  torch: ``python tools/install.py`` does (and installs all of the above).
* ``.[tests]``, ``.[mim]``
* ``.[executorch]``  ExecuTorch .pte export and runtime (not in ``all``:
  ``python tools/install.py --with executorch`` adds it to the stack)

As the upstream OpenMMLab packages do, the configs, tools and model index
are packaged under ``iformer_mm/.mim`` (symlinks for an editable install,
copies for a wheel or sdist), which is where ``mim`` looks for them.
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))
MIM_FILES = ['configs', 'tools', 'model-index.yml', 'constraints.txt']


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


def parse_requirements(name):
    """Requirement lines of ``requirements/<name>.txt`` (comments dropped)."""
    reqs = []
    with open(osp.join(HERE, 'requirements', name + '.txt')) as fh:
        for line in fh:
            line = line.split('#', 1)[0].strip()
            if line:
                reqs.append(line)
    return reqs


def add_mim_extension():
    """Put configs, tools and model-index.yml into ``iformer_mm/.mim``.

    Symlinks for ``pip install -e .`` (``develop`` / ``editable_wheel``),
    copies when a wheel or sdist is built, as mmdet's setup.py does.
    """
    argv = ' '.join(sys.argv)
    if 'develop' in argv or 'editable' in argv:
        mode = 'copy' if os.name == 'nt' else 'symlink'
    elif any(cmd in argv for cmd in ('sdist', 'bdist_wheel', 'build',
                                      'install')):
        mode = 'copy'
    else:
        return
    mim_path = osp.join(HERE, 'iformer_mm', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src = osp.join(HERE, name)
        dst = osp.join(mim_path, name)
        if not osp.exists(src):
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_path), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
                '__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='iformer-mm',
        version=read_version(),
        description='iFormer backbones (ICLR 2025) for OpenMMLab 2.0: mmdet, '
        'mmsegmentation and mmpretrain',
        long_description=read_readme(),
        long_description_content_type='text/markdown',
        packages=find_packages(include=['iformer_mm', 'iformer_mm.*']),
        package_data={'iformer_mm': [
            '.mim/model-index.yml', '.mim/constraints.txt',
            '.mim/configs/*.py', '.mim/configs/*/*.py',
            '.mim/configs/*/*/*.py', '.mim/configs/*/*.yml',
            '.mim/tools/*.py', '.mim/tools/*.sh'
        ], 'iformer_mm.deploy': ['data/*.csv', 'data/*.json']},
        include_package_data=True,
        python_requires='>=3.9',
        install_requires=parse_requirements('runtime'),
        extras_require={
            'det': parse_requirements('det'),
            'seg': parse_requirements('seg'),
            'cls': parse_requirements('cls'),
            'deploy': parse_requirements('deploy'),
            'tests': parse_requirements('tests'),
            'mim': parse_requirements('mim'),
            'predictor': parse_requirements('predictor'),
            'executorch': parse_requirements('executorch'),
            'all': (parse_requirements('det') + parse_requirements('seg') +
                    parse_requirements('cls') +
                    parse_requirements('deploy') +
                    parse_requirements('predictor') +
                    parse_requirements('tests')),
        },
        classifiers=[
            'Programming Language :: Python :: 3',
            'Topic :: Scientific/Engineering :: Artificial Intelligence',
        ],
        zip_safe=False,
    )
