"""The package's layers (issue 18, item 3): every import between attn_zoo's modules goes down the order in
docs/architecture.md, read from the source with ``ast`` (nothing is imported). Imports inside functions and
under ``TYPE_CHECKING`` count for the order: they are dependencies all the same.

Top to bottom (a module may import its own package and any lower layer, never a higher one or a sibling
of its own rank)::

    cli                      entry points: `attn-zoo`, `python -m attn_zoo.cli.ddp` (torchrun), `... cli.scaling`
    grid                     suites, cells, executors, the store
    testing | report         the conformance kit | tables and plots of stored rows (frames in, never the store)
    train                    recipe, checkpoints, one cell's training, DDP plumbing
    budget                   the budget matcher (counts and measures models)
    measure                  counting, latency, memory, ERF, scaling fits
    data                     sources, the Pathfinder generator, data config, seeded loaders, image caches
    attn_zoo                 the package's Python API (create_model, create_mechanism, __version__)
    backbone                 the hierarchical harness and its presets
    mechanisms               one file per mechanism, registered by name
    registry                 the mechanism registry (knobs, plugins, entry points)
    mechanisms.base          the Mixer contract
    layers                   shared building blocks (attention kernels, windows, neighbourhoods, stems)
    names | paths | typecheck  the generic name registry | safe file writes | values against type hints
    errors                   the exception classes
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attn_zoo"

# (component, rank): a component is a module or a package (the longest matching prefix wins)
RANKS = {
    "attn_zoo.cli": 13,
    "attn_zoo.__main__": 14,
    "attn_zoo.grid": 12,
    "attn_zoo.testing": 11,
    "attn_zoo.report": 11,
    "attn_zoo.train": 10,
    "attn_zoo.budget": 9,
    "attn_zoo.measure": 8,
    "attn_zoo.data": 7.5,  # below train (which trains on it) and measure; imports only names, paths, errors
    "attn_zoo": 7,
    "attn_zoo.backbone": 6,
    "attn_zoo.mechanisms": 5,
    "attn_zoo.registry": 4,
    "attn_zoo.mechanisms.base": 3,
    "attn_zoo.layers": 2,
    "attn_zoo.names": 1,
    "attn_zoo.paths": 1,
    "attn_zoo.typecheck": 1,
    "attn_zoo.errors": 0,
}

# upward edges kept on purpose, each with its reason
ALLOWED = {
    ("attn_zoo.registry", "attn_zoo.mechanisms"): (
        "the registry finds the built-in mechanism files by name (pkgutil over the package, the way entry "
        "points are found); the package's __init__ is a docstring, and no mechanism is imported by name"
    ),
    ("attn_zoo.grid.executors", "attn_zoo.grid.ray_executor"): (
        "the executor registry loads the built-in Ray executor when it is first read (the module registers "
        "itself there; Ray is imported only when it runs), so that importing attn_zoo.grid loads no executor"
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def component(module: str) -> str:
    best = max((c for c in RANKS if module == c or module.startswith(c + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no layer: place it in RANKS (and docs/architecture.md)"
    return best


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only: they never run)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def imports(module: str, *, runtime_only: bool = False) -> set[str]:
    """The attn_zoo modules that ``module`` imports anywhere in its file (``from X import name`` counts as
    X.name when that is a module, else as X); ``runtime_only`` leaves out ``if TYPE_CHECKING:`` imports."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_blocks(tree) if runtime_only else set()
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m == "attn_zoo" or m.startswith("attn_zoo.")}


EDGES = sorted((m, target) for m in MODULES for target in imports(m) if target != m)


def test_every_import_target_is_a_module_of_the_package():
    unknown = [f"{m} imports {t}" for m, t in EDGES if t not in MODULES]
    assert not unknown, unknown


def test_every_module_has_a_layer():
    for module in MODULES:
        component(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module):
    mine = component(module)
    wrong = []
    for target in sorted(imports(module) - {module}):
        theirs = component(target)
        if theirs == mine or (module, target) in ALLOWED:
            continue
        if RANKS[theirs] >= RANKS[mine]:
            wrong.append(f"{target} ({theirs}, rank {RANKS[theirs]})")
    assert not wrong, f"{module} ({mine}, rank {RANKS[mine]}) imports higher or sibling layers: {', '.join(wrong)}"


def test_no_cycles_between_modules():
    """No module imports, at run time, one that imports it back (type-only imports are left out: they
    never run, and an annotation may name a class of a module that uses this one)."""
    graph = {m: {t for t in imports(m, runtime_only=True) if t in MODULES and (m, t) not in ALLOWED} for m in MODULES}
    graph = {m: targets - {m} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_walker_sees_imports_inside_functions_and_type_checking_blocks():
    # the lazy import in the registry is the one documented upward edge: the walker must find it
    assert "attn_zoo.mechanisms" in imports("attn_zoo.registry")
    assert ("attn_zoo.registry", "attn_zoo.mechanisms") in EDGES
    # train.run names Distributed only in annotations: a layering edge, not a run-time one
    assert "attn_zoo.train.distributed" in imports("attn_zoo.train.run")
    assert "attn_zoo.train.distributed" not in imports("attn_zoo.train.run", runtime_only=True)
