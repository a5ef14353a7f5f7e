"""The package's layering, read from the source with ``ast``: imports only go down.

Layers, bottom first (a module may import its own layer and the ones below):

0. ``_core``: Task, errors, timeouts, timer, the Backend base and backend table.
1. ``_os``: processes, trees, the guardian, the child loop.
2. ``_ipc``: shared memory, rings, channels, process-shared sync, FIFOs.
3. ``backends``: thread, process, cluster; each owns its primitives.
4. the API modules: spawn, groups, pools, pipelines, commands, supervisor...
5. ``polytask/__init__`` (lazy re-exports), 6. ``cli``.

Imports inside functions are allowed only where listed in ``LAZY`` with the
reason; everything else is imported at the top, so a cycle cannot hide.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "polytask"

LAYERS: list[tuple[str, ...]] = [
    ("polytask._core",),
    ("polytask._os",),
    ("polytask._ipc",),
    ("polytask.backends",),
    (
        "polytask._spawn",
        "polytask._group",
        "polytask._factories",
        "polytask._pipeline",
        "polytask._pool",
        "polytask._progress",
        "polytask._commands",
        "polytask._shellquote",
        "polytask._parallel_spec",
        "polytask._procfile",
        "polytask._supervision",
        "polytask._upconfig",
        "polytask._supervisor",
        "polytask._control",
        "polytask._upcontrol",
        "polytask.debug",
        "polytask.joblib",
        "polytask.anyio",
    ),
    ("polytask",),
    ("polytask.cli", "polytask.__main__"),
]

#: (importer, imported) pairs that may import inside a function, and why.
LAZY: dict[tuple[str, str], str] = {
    # The CLI starts fast: each subcommand imports what it runs when it runs.
    ("polytask.cli._demo", "*"): "CLI start-up",
    ("polytask.cli._parallel", "*"): "CLI start-up",
    ("polytask.cli._up", "*"): "CLI start-up",
    # Only TaskGroup.run() needs the command loop: a group of threads does not pay for it.
    ("polytask._group", "polytask._commands"): "TaskGroup.run only",
    # A worker imports the pool's chunk runner only when a chunk arrives, and
    # the pool names the worker's retire hook only inside a worker.
    ("polytask._pool.batch", "polytask.backends.process.worker"): "only inside a worker",
    # Forked children run the worker's loop; the parent never imports it.
    ("polytask.backends.process.backend", "polytask.backends.process.worker"): "fork child",
    ("polytask.backends.process.backend", "polytask._os.guardian"): "fork child",
    # The cluster primitives and the hub plugin need a running engine (optional extra).
    ("polytask.backends.cluster.dask", "polytask.backends.cluster.sync"): "optional engine",
    ("polytask.backends.cluster.ray", "polytask.backends.cluster.sync"): "optional engine",
    ("polytask.backends.cluster.sync", "polytask.backends.cluster.plugin"): "optional engine",
    # A cluster primitive made in a task finds the task's backend by name; the
    # backend table loads cluster modules, so this must wait until called.
    ("polytask.backends.cluster.sync", "polytask.backends"): "backend table",
    ("polytask.backends.cluster.child", "polytask.backends"): "backend table",
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    top: bool  # at module level (not in a function, not under TYPE_CHECKING)
    typing: bool = False  # under TYPE_CHECKING


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists()


def _imports_of(path: Path) -> list[Import]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # module-level try/except and if blocks are top level too
        if isinstance(node, (ast.Try, ast.If)) and id(node) not in typing_only:
            top_level.update(id(n) for n in ast.walk(node))
    found: list[Import] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif node.level == 0:
            targets = [node.module or ""]
        else:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
            subs = [f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")]
            targets = subs or [mod]
        for t in targets:
            if t == "polytask" or t.startswith("polytask."):
                typing = id(node) in typing_only
                found.append(Import(name, t, node.lineno, id(node) in top_level, typing))
    return found


ALL = [imp for p in sorted(PKG.rglob("*.py")) for imp in _imports_of(p)]


def _layer(module: str) -> int:
    best, depth = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def _lazy_allowed(imp: Import) -> bool:
    return (
        (imp.importer, imp.imported) in LAZY
        or (imp.importer, "*") in LAZY
        or any(
            imp.imported == i or imp.imported.startswith(i + ".")
            for (m, i) in LAZY
            if m == imp.importer
        )
    )


def test_every_module_has_a_layer() -> None:
    for p in PKG.rglob("*.py"):
        _layer(_module_name(p))


def test_imports_only_go_down() -> None:
    up = [
        f"{i.importer}:{i.line} imports {i.imported} (layer {_layer(i.imported)} > {_layer(i.importer)})"
        for i in ALL
        if _layer(i.imported) > _layer(i.importer)
    ]
    assert up == [], "\n".join(up)


@pytest.mark.parametrize("with_typing", [False, True], ids=["runtime", "with-type-only"])
def test_no_import_cycle_at_module_level(with_typing: bool) -> None:
    # with-type-only: an import under TYPE_CHECKING ties two modules as much for
    # a reader; a Protocol names what one needs of the other instead.
    graph: dict[str, set[str]] = {}
    for i in ALL:
        if (i.top or (with_typing and i.typing)) and i.imported != i.importer:
            graph.setdefault(i.importer, set()).add(i.imported)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "polytask" or node.startswith(nxt + "."):
                continue  # a package's lazy __init__ / a submodule naming its package
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_imports_inside_functions_are_only_the_documented_lazy_ones() -> None:
    hidden = [
        f"{i.importer}:{i.line} imports {i.imported} inside a function"
        for i in ALL
        if not i.top and not i.typing and not _lazy_allowed(i)
    ]
    assert hidden == [], "\n".join(hidden) + "\n(import at the top, or add to LAZY with why)"


def test_the_lazy_list_has_no_stale_entries() -> None:
    used = {
        (i.importer, "*") if (i.importer, "*") in LAZY else (i.importer, i.imported) for i in ALL
    }
    stale = [
        k for k in LAZY if k not in used and not any(k[0] == u[0] for u in used if k[1] != "*")
    ]
    assert stale == []


def _loaded_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return {m for m in out.split() if m.startswith("polytask")}


def test_import_polytask_loads_only_the_package() -> None:
    # `polytask --help` and users of threads pay for nothing else.
    assert _loaded_by("import polytask") == {"polytask"}


def test_core_loads_no_backend() -> None:
    loaded = _loaded_by(
        "import polytask._core.task, polytask._core.backend, polytask._core.timeouts"
    )
    assert {m for m in loaded if not m.startswith("polytask._core")} <= {"polytask"}, loaded


def test_a_worker_imports_only_what_it_runs() -> None:
    loaded = _loaded_by("import polytask.backends.process.worker")
    heavy = {"_pool", "_progress", "_factories", "_group", "_commands", "_supervisor", "cli"}
    assert not {m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in heavy}, loaded
