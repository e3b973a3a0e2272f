"""No import cycle in ``iformer_mm``.

The graph is read from the source (nothing is imported): an edge for every
``import`` and ``from ... import`` of a module of the package, at module
level or inside a function (a function-level import is still a dependency,
only a later one), relative imports resolved. An import of a package is an
import of its ``__init__``; ``from pkg import name`` is an import of
``pkg.name`` where that is a module, else of ``pkg``. A module does not
depend on its parent packages here (Python runs their ``__init__`` first,
but that is an order of execution, not a dependency of the module).
"""
import ast
import os
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = 'iformer_mm'

def package_modules(root=ROOT, package=PACKAGE):
    """Module name -> source path, every ``.py`` file under ``package``."""
    modules = {}
    for dirpath, dirnames, filenames in os.walk(osp.join(root, package)):
        dirnames[:] = sorted(d for d in dirnames if d != '__pycache__')
        parts = osp.relpath(dirpath, root).split(os.sep)
        for filename in sorted(filenames):
            if not filename.endswith('.py'):
                continue
            stem = filename[:-len('.py')]
            name = '.'.join(parts if stem == '__init__' else parts + [stem])
            modules[name] = osp.join(dirpath, filename)
    return modules


def imports_of(name, path, modules):
    """The modules of ``modules`` that module ``name`` (at ``path``)
    imports, anywhere in its source."""
    is_package = osp.basename(path) == '__init__.py'
    here = name if is_package else name.rpartition('.')[0]
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split('.')
                base = base[:len(base) - (node.level - 1)]
                base = '.'.join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                sub = f'{base}.{alias.name}'
                if sub in modules:
                    found.add(sub)
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def import_graph():
    modules = package_modules()
    return {name: imports_of(name, path, modules)
            for name, path in modules.items()}


def strongly_connected(graph):
    """Tarjan's strongly connected components with more than one module
    (the import cycles), each as a frozenset."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph, component):
    """One cycle through ``component``, as ``a -> b -> ... -> a``."""
    start = min(component)
    paths = {start: [start]}
    todo = [start]
    while todo:  # breadth first: the shortest way back to start
        v = todo.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return ' -> '.join(paths[v] + [start])
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError(f'no cycle in {sorted(component)}')


def test_the_graph_is_read_right():
    """Relative, absolute, function-level and package imports all count."""
    graph = import_graph()
    assert 'iformer_mm.errors' in graph['iformer_mm.models.checkpoint']
    # function-level, relative, two levels up
    assert 'iformer_mm.models.checkpoint' in \
        graph['iformer_mm.models.backbones.iformer']
    # ``from . import compat``: the package's __init__
    assert 'iformer_mm.compat' in graph['iformer_mm']
    # a cycle is found and named
    toy = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert strongly_connected(toy) == [frozenset('abc')]
    assert a_cycle(toy, frozenset('abc')) == 'a -> b -> c -> a'


def test_no_import_cycle():
    graph = import_graph()
    found = [a_cycle(graph, c) for c in strongly_connected(graph)]
    assert not found, 'import cycles:\n' + '\n'.join(found)
