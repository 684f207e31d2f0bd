"""The size rules of the code base: no library or command-line function over 80 lines, no command function
over 60, no library module over 800 (counted from the source with the ast module)."""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("edm_space", "samplers", "presets")
MAX_FUNCTION, MAX_COMMAND, MAX_MODULE = 80, 60, 800


def modules():
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(REPO, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(folder, name), REPO)


def functions(path):
    """(name, first line, length in lines, is a click command) of every function in the module."""
    with open(os.path.join(REPO, path)) as file:
        tree = ast.parse(file.read())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            command = any("command" in ast.unparse(decorator) for decorator in node.decorator_list)
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1, command


def test_the_walk_finds_the_packages():
    found = list(modules())
    assert "edm_space/engine.py" in found and "samplers/__init__.py" in found and "presets/__init__.py" in found


@pytest.mark.parametrize("path", list(modules()))
def test_module_and_function_lengths(path):
    with open(os.path.join(REPO, path)) as file:
        lines = file.read().count("\n")
    assert lines <= MAX_MODULE, f"{path} has {lines} lines; split it along its concerns"
    too_long = [f"{path}:{line} {name} ({length} lines)" for name, line, length, command in functions(path)
                if length > (MAX_COMMAND if command else MAX_FUNCTION)]
    assert not too_long, "functions too long: " + ", ".join(too_long)
