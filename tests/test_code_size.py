"""Readable units: no function of the package is longer than :data:`MAX_LINES` lines of code."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

MAX_LINES = 60
"""The most lines of code a function may have: its signature and body (nested functions included), without its
docstring, blank lines and comment lines."""

PACKAGES = ("ssl_bench", "datamodules")


def _docstring_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[int]:
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return set()


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef, source: list[str]) -> int:
    """The lines of code of ``function`` in the file whose lines are ``source``."""
    docstring = _docstring_lines(function)
    span = range(function.lineno, (function.end_lineno or function.lineno) + 1)
    return sum(1 for number in span if number not in docstring
               and source[number - 1].strip() and not source[number - 1].strip().startswith("#"))


def long_functions(root: Path) -> list[str]:
    """``FILE:LINE NAME (N lines)`` for every function of the packages under ``root`` over :data:`MAX_LINES`."""
    found = []
    for package in PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            text = file.read_text(encoding="utf-8")
            source = text.splitlines()
            for node in ast.walk(ast.parse(text, filename=str(file))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = code_lines(node, source)
                    if lines > MAX_LINES:
                        found.append(f"{file.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_the_limit():
    offenders = long_functions(REPO)
    assert not offenders, f"functions over {MAX_LINES} lines of code; split them: " + "; ".join(offenders)


def test_the_count_skips_docstring_blank_and_comment_lines():
    source = 'def f(x):\n    """Doc.\n\n    More."""\n\n    # a comment\n    y = x\n    return y\n'
    function = ast.parse(source).body[0]
    assert isinstance(function, ast.FunctionDef)
    assert code_lines(function, source.splitlines()) == 3
