"""Import layering of the source tree (static: ast, nothing is imported).

Imports go one way: no circle of modules in wrn_fast/, kernels/ (installed as
wrn_fast.kernels) and bench/, counting imports inside functions and under
``if TYPE_CHECKING:`` too (a lazy import still ties the two modules together); and
kernels/ is the bottom layer: it imports only torch, triton, the standard library and
itself (never wrn_fast, never bench).
"""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# directory -> the package name it is imported as
PACKAGES = {"wrn_fast": "wrn_fast", "kernels": "wrn_fast.kernels", "bench": "bench"}


def _modules(root, packages):
    """{dotted module name: file path} of every .py file under the packages' directories."""
    mods = {}
    for directory, package in packages.items():
        base = os.path.join(root, directory)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in filenames:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, ".")
                    rel = "" if rel == "__init__" else rel.removesuffix(".__init__")
                    mods[f"{package}.{rel}" if rel else package] = os.path.join(dirpath, f)
    return mods


def _imported_names(module, path):
    """Absolute names ``module`` imports (anywhere in the file), with ``from P import N``
    as P.N (N may be a submodule) and relative imports resolved."""
    is_package = path.endswith("__init__.py")
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                parts = parts[:len(parts) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            yield from (f"{base}.{a.name}" for a in node.names)


def import_graph(root=ROOT, packages=PACKAGES):
    """{module: set of project modules it imports}. An imported name maps to the longest
    project module that prefixes it (``from .a import f`` -> a, ``from . import a`` -> a);
    the top-level name ``kernels`` is the package wrn_fast.kernels."""
    mods = _modules(root, packages)
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for name in _imported_names(m, path):
            if name == "kernels" or name.startswith("kernels."):
                name = "wrn_fast." + name
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != m:
                graph[m].add(name)
    return graph


def import_circles(graph):
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_the_checker_finds_a_lazy_circle(tmp_path):
    """A circle closed by an import inside a function, a relative ``from . import`` of a
    submodule and the ``kernels`` alias are all seen; a one-way chain is no circle."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from .b import f\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\nfrom kernels import k\n")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "kernels" / "k.py").write_text("def g():\n    import pkg.c\n")
    graph = import_graph(str(tmp_path), {"pkg": "pkg", "kernels": "wrn_fast.kernels"})
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.a", "wrn_fast.kernels.k"}
    assert import_circles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "wrn_fast.kernels.k"]]
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    pass\n")
    (tmp_path / "kernels" / "k.py").write_text("import torch\n")
    assert import_circles(import_graph(str(tmp_path), {"pkg": "pkg", "kernels": "wrn_fast.kernels"})) == []


def test_no_import_circle():
    graph = import_graph()
    assert "bench.sass_worker" in graph and "wrn_fast.kernels.conv_fwd" in graph  # the tree was read
    circles = import_circles(graph)
    detail = ["  " + " | ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in circles]
    assert not circles, "import circles:\n" + "\n".join(detail)


def test_kernels_are_the_bottom_layer():
    """kernels/ imports only torch, triton, the standard library and its own modules."""
    kdir = os.path.join(ROOT, "kernels")
    for module, path in _modules(ROOT, {"kernels": "wrn_fast.kernels"}).items():
        for name in _imported_names(module, path):
            top = name.split(".")[0]
            own = name.startswith("wrn_fast.kernels.") or name == "wrn_fast.kernels" or top == "kernels"
            assert own or top in ("torch", "triton") or top in sys.stdlib_module_names, \
                f"{os.path.relpath(path, kdir)} imports {name}"
