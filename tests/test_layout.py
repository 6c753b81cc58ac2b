"""The package layout the project promises: pic_core is a library without import cycles that
never imports the federation or the command layer, and the `fedpic` parser starts light."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "pic_core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute module name of a `from ... import` (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules a file imports (`from pkg import mod` counts as pkg.mod when that is a module)."""
    module, tree = _module_name(path), ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in CORE.rglob("*.py")}


def test_pic_core_has_no_import_cycle():
    modules = _core_modules()
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
             for name, path in modules.items()}
    # a package's __init__ runs before its submodules: importing pkg.sub also imports pkg
    for name in modules:
        for target in list(graph[name]):
            parent = target.rsplit(".", 1)[0]
            if parent in modules and parent != name and not name.startswith(parent + "."):
                graph[name].add(parent)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle in pic_core: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name)
    assert "pic_core.runtime" in modules and "pic_core.exported" in modules and len(graph) > 20


def test_pic_core_never_imports_flower_or_the_command_layer():
    offenders = {}
    for name, path in _core_modules().items():
        bad = sorted(m for m in _imports(path, top_level_only=False)
                     if m.split(".")[0] in ("flwr", "fedpic", "server", "client", "simulations"))
        if bad:
            offenders[name] = bad
    assert not offenders, offenders


def test_building_the_parser_imports_no_torch_opencv_or_flower():
    code = ("import sys, fedpic.cli; fedpic.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'cv2', 'flwr', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_help_works_from_another_folder(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedpic", "--help"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    for command in ("pretrain", "prior", "personalize", "evaluate", "crop", "export", "synth", "simulate",
                    "deploy", "baselines", "report", "demo"):
        assert command in out.stdout


def test_parse_time_literals_match_the_library():
    from fedpic.commands import report
    from simulations.baselines import METHODS, LocalOnlySettings

    assert report.METHODS == tuple(METHODS)
    assert (report.LOCAL_EPOCHS, report.LOCAL_LR) == (LocalOnlySettings.epochs, LocalOnlySettings.lr)
