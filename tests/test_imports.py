"""The import map: every import points one way down the data flow (issue 9).

    errors, overrides, atomic, tokenizer  ->  data  ->  ops, kernels  ->  models  ->  config,
    checkpoint  ->  evaluation  ->  sim, tasks, convert  ->  training  ->  sweep, command lines

A module may import its own layer or a lower one, never a higher one, and the module graph has
no cycle. `kernels/` imports nothing from `nanodna/`. Imports inside functions are only for
optional packages, never for nanodna's own modules. The walk reads the source with `ast`
(nothing is imported), so it is fast and sees lazy imports too.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lowest first. A module's layer is the longest prefix listed here.
LAYERS = [
    ["nanodna", "nanodna.errors", "nanodna.overrides", "nanodna.atomic", "nanodna.tokenizer"],
    ["nanodna.data"],
    ["nanodna.ops", "kernels"],
    ["nanodna.models"],
    ["nanodna.config", "nanodna.checkpoint"],
    ["nanodna.evaluation"],
    ["nanodna.sim", "nanodna.tasks", "nanodna.convert", "nanodna.vep", "nanodna.embed"],
    ["nanodna.training"],
    ["nanodna.sweep", "train", "eval", "__main__"],
]
CLI = len(LAYERS) - 1


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_files() -> list[pathlib.Path]:
    files = sorted((ROOT / "nanodna").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    return files + [ROOT / "train.py", ROOT / "eval.py"]


KNOWN = {module_name(p) for p in source_files()}


def layer(module: str) -> int:
    if module.endswith("__main__"):
        return CLI
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    assert best is not None, f"{module} is in no layer of the import map: add it to LAYERS"
    return best


def is_ours(name: str) -> bool:
    return name == "nanodna" or name.startswith(("nanodna.", "kernels"))


def imports(path: pathlib.Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for each of our own imports in a file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from nanodna.data import stream` names the submodule nanodna.data.stream;
                # `from nanodna.data import DataError` names the package nanodna.data.
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    out.append((sub if sub in KNOWN else base, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(name, line, fn) for name, line, fn in out if is_ours(name)]


def resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` refers to (`a.b.func` -> `a.b`)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    known = KNOWN
    edges: dict[str, set[str]] = {}
    for path in source_files():
        mod = module_name(path)
        edges[mod] = {t for n, _, _ in imports(path, mod) if (t := resolve(n, known)) and t != mod}
    return edges


def test_every_import_points_down_the_data_flow():
    known = KNOWN
    upward = []
    for path in source_files():
        mod = module_name(path)
        for name, line, _ in imports(path, mod):
            target = resolve(name, known)
            if target is None or target == mod:
                continue
            if mod.startswith("kernels") and target.startswith("nanodna"):
                upward.append(f"{path.relative_to(ROOT)}:{line} kernels import {target}")
            elif layer(target) > layer(mod):
                upward.append(f"{path.relative_to(ROOT)}:{line} {mod} -> {target} (upward)")
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith("nanodna") and node.startswith("nanodna") and nxt == "nanodna":
                continue  # the root package's docstring-only __init__
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack
                              else f"{node} -> {nxt}")
            elif state.get(nxt) is None:
                walk(nxt, stack + [node])
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            walk(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_function_level_import_of_our_own_modules():
    lazy = []
    for path in source_files():
        mod = module_name(path)
        lazy += [f"{path.relative_to(ROOT)}:{line} imports {name} inside a function"
                 for name, line, in_function in imports(path, mod) if in_function]
    assert not lazy, "nanodna modules imported lazily (import them at the top):\n" + "\n".join(lazy)


def test_the_walk_sees_real_imports():
    """Guard against a walk that silently finds nothing."""
    edges = graph()
    assert "nanodna.ops.scan" in edges["nanodna.models.mamba"]
    assert any(t.startswith("nanodna.training") for t in edges["train"])
