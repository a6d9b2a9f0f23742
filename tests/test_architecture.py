"""The layout keeps its shape: stages only look down, no cycles, short functions and modules, lint clean."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "hwprune"
MODULES = sorted(SRC.rglob("*.py"))


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_import_contracts_hold():
    # pyproject.toml [tool.importlinter]: no cycles between siblings; stages in data-flow order.
    run = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in run.stdout


def test_ruff_is_clean_on_src():
    run = subprocess.run([_tool("ruff"), "check", "src"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]


def test_no_function_over_80_lines_and_no_module_over_500():
    long_functions, long_modules = [], []
    for path in MODULES:
        text = path.read_text()
        if len(text.splitlines()) > 500:
            long_modules.append(str(path.relative_to(SRC)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{path.relative_to(SRC)}:{node.name}")
    assert long_modules == [] and long_functions == []


def test_no_private_name_imported_across_modules():
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hwprune"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                found += [f"{path.relative_to(SRC)}: {name}" for name in private]
    assert found == []


def test_import_hwprune_is_lean():
    code = "import sys, hwprune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
