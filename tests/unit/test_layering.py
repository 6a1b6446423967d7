"""The architecture as tests: layers, no cycles, small classes, lazy imports only where needed.

Read from the source with ``ast`` (nothing is imported), so a violation names
the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("nx47_pipeline", "nx47_widgets")
#: The only modules a function may import lazily: heavy, optional, or both
#: (torch; the Dask stack: dask, distributed, dask-image, zarr).
LAZY_OK = ("torch", "dask", "distributed", "dask_image", "zarr", "nnunetv2", "acvl_utils")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, child.lineno, top))
                for a in child.names:  # "from pkg import module"
                    if f"{child.module}.{a.name}" in MODULES:
                        found.append((f"{child.module}.{a.name}", child.lineno, top))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and top and _is_type_checking(child):
                continue
            else:
                visit(child, top)

    visit(tree, True)
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _root(name: str) -> str:
    return name.split(".")[0]


def test_the_layer_packages_exist():
    for layer in ("io", "data", "telemetry", "model", "unet", "run", "cli"):
        assert (REPO / "nx47_pipeline" / layer / "__init__.py").is_file(), layer
    for part in ("state", "views"):
        assert (REPO / "nx47_widgets" / part / "__init__.py").is_file(), part


def test_telemetry_depends_on_nothing_above_it():
    banned = ("nx47_pipeline.model", "nx47_pipeline.run", "nx47_pipeline.unet", "nx47_pipeline.data",
              "nx47_widgets", "torch", "scipy")
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("nx47_pipeline.telemetry"):
            continue
        for mod, line, _ in _imports(path):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_pipeline_never_imports_widgets():
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}"
           for name, p in MODULES.items() if name.startswith("nx47_pipeline")
           for mod, line, _ in _imports(p) if _root(mod) in ("nx47_widgets", "ipywidgets", "IPython")]
    assert not bad, "\n".join(bad)


def test_function_level_imports_are_only_torch_and_dask():
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod} inside a function"
           for p in MODULES.values()
           for mod, line, top in _imports(p) if not top and _root(mod) not in LAZY_OK]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for mod, _, top in _imports(path):
            if top and mod in MODULES and mod != name:
                graph[name].add(mod)
    # a package's __init__ re-exporting its modules is not a cycle of its modules
    for name in graph:
        if (MODULES[name].name == "__init__.py"):
            graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def dfs(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                dfs(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            dfs(n)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("limit", [300])
def test_no_class_longer_than_the_limit(limit):
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} class {node.name} is {n} lines")
    assert not long, "\n".join(long)


def test_widgets_never_match_event_names_by_substring():
    """Routing is by the shared enums (MetricName, StageName, Status), not by
    ``"loss" in name``-style tests on event fields."""
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("nx47_widgets"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Compare) and len(node.ops) == 1
                    and isinstance(node.ops[0], (ast.In, ast.NotIn))
                    and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)
                    and isinstance(node.comparators[0], (ast.Name, ast.Attribute, ast.Subscript, ast.Call))):
                target = ast.unparse(node.comparators[0])
                if any(k in target for k in ("name", "stage", "kind", "status")):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


#: Names of the Betti-number approximation of TopoScore: only the metric
#: module may name them (it offers the approximation under
#: ``TopoMethod.APPROX`` when a caller asks for it by name).
APPROXIMATION_NAMES = ("betti_min_matcher", "topo_feature_counts", "APPROX_TOPO_METHOD", "APPROX")


def test_no_caller_reaches_the_toposcore_approximation():
    metric = REPO / "nx47_pipeline" / "model" / "metric.py"
    sources = [*MODULES.values(), *sorted((REPO / "benchmarks").glob("*.py"))]
    bad = []
    for path in sources:
        if path == metric:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            name = (node.attr if isinstance(node, ast.Attribute)
                    else node.id if isinstance(node, ast.Name)
                    else None)
            if name in APPROXIMATION_NAMES:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} names {name}")
            if isinstance(node, ast.keyword) and node.arg in ("topo_method", "topo_matcher", "matcher", "method") \
                    and isinstance(node.value, ast.Constant) and node.value.value in ("approx",):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} asks for the approximation")
    assert not bad, "\n".join(bad)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_run_folder_file_names_are_spelled_only_in_io_run_folder():
    """Every artifact name of an output folder (stats.json, cluster.json, ...) is
    spelled once, in ``nx47_pipeline/io/run_folder.py``; code elsewhere asks a
    ``RunFolder`` (docstrings and argparse's help / description texts may name
    the files for readers)."""
    import re

    from nx47_pipeline.io import run_folder

    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in run_folder.ARTIFACT_NAMES) + r")(?![\w.])")
    home = REPO / "nx47_pipeline" / "io" / "run_folder.py"
    bad = []
    for name, path in MODULES.items():
        if path == home:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):  # help="..." / description="...": text for readers, like docstrings
            if isinstance(node, ast.keyword) and node.arg in ("help", "description"):
                docs |= {id(n) for n in ast.walk(node.value)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for m in pattern.finditer(node.value):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {m.group(1)!r}")
    assert not bad, "run-folder file names spelled outside io/run_folder.py:\n" + "\n".join(bad)


def test_tests_wait_on_conditions_not_on_the_clock():
    """At most five sleeps in the whole suite, each saying why no condition can
    serve (``tests/waits.py``'s polling step, and work paced on purpose)."""
    needle = "time." + "sleep("  # spelled apart so this test does not count itself
    found = [(path.relative_to(REPO), i, line) for path in sorted((REPO / "tests").rglob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(found) <= 5, found
    lines = {(str(p), i): line for p, i, line in found}
    for (p, i), line in lines.items():
        before = Path(REPO / p).read_text().splitlines()[i - 2]
        assert "#" in line.split(needle, 1)[1] or before.strip().startswith("#"), f"{p}:{i}: no comment: {line}"


def _state_nodes():
    """(path, node) for every AST node of the modules of ``nx47_widgets/state``."""
    for name, path in MODULES.items():
        if name.startswith("nx47_widgets.state"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                yield path.relative_to(REPO), node


def test_state_holds_no_colours():
    """Colours are the views' (``views/colours.py``): state says what a run is, not how it looks."""
    import re

    colour = re.compile(r"#[0-9a-fA-F]{6}\b")
    bad = [f"{path}:{node.lineno}: {node.value!r}" for path, node in _state_nodes()
           if isinstance(node, ast.Constant) and isinstance(node.value, str) and colour.search(node.value)]
    assert not bad, "colours in state/:\n" + "\n".join(bad)


def _called(node: ast.Call) -> str:
    """``open``, ``read_text``, ``json.loads`` ...: what a call calls, by name."""
    f = node.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "json":
        return f"json.{f.attr}"
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def test_state_reads_no_file():
    """State folds events and documents; the files are opened by ``nx47_widgets/loaders.py``
    (no ``open``, ``read_text`` / ``read_bytes``, ``json.load(s)`` or ``read_json`` in state/)."""
    banned = {"open", "read_text", "read_bytes", "read_json", "write_json", "json.load", "json.loads"}
    bad = [f"{path}:{node.lineno}: {_called(node)}()" for path, node in _state_nodes()
           if isinstance(node, ast.Call) and _called(node) in banned]
    assert not bad, "file reads in state/:\n" + "\n".join(bad)
