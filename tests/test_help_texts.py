"""Every command-line option explains itself in ``--help``: the CLI and the experiment scripts."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from seqjax.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "experiments").glob("*.py"))


def _options_without_help(source: str) -> list[str]:
    """``add_argument`` calls in ``source`` that give no non-empty ``help=``, as 'line: flag'."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        helps = [k.value for k in node.keywords if k.arg == "help"]
        described = helps and not (isinstance(helps[0], ast.Constant) and not helps[0].value)
        if not described:
            flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
            missing.append(f"{node.lineno}: {' '.join(map(str, flags))}")
    return missing


def test_the_scan_finds_an_option_without_help():
    src = "p.add_argument('--a', help='x')\np.add_argument('--b')\np.add_argument('--c', help='')"
    assert _options_without_help(src) == ["2: --b", "3: --c"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_experiment_option_has_help(script):
    assert _options_without_help(script.read_text()) == [], script.name


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {"seqjax": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"seqjax {name}"] = sub
    return found


def test_every_cli_option_has_help():
    parsers = _subparsers(build_parser())
    assert {"seqjax train", "seqjax translate", "seqjax evaluate"} <= set(parsers)
    missing = [
        f"{name} {'/'.join(a.option_strings) or a.dest}"
        for name, p in parsers.items()
        for a in p._actions
        if not isinstance(a, argparse._SubParsersAction)
        and (a.help is None or (a.help != argparse.SUPPRESS and not a.help.strip()))
    ]
    assert missing == []
