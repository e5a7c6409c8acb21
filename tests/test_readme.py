"""The README's commands and Python API stay true to the code.

Every ``simgan ...`` line of its bash blocks parses with the real command-line parser; every ``--flag`` of an
inline ``simgan ...`` or ``python scripts/X.py ...`` span is one that command takes; every call in its Python
block names a function or class that exists, with arguments its signature accepts. (The commands themselves run
in the quickstart and the benchmarks; this catches a renamed flag or argument the day it is renamed.)
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import shlex
from pathlib import Path

import pytest

from simgan.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCKS = [(lang, body) for lang, body in FENCE.findall(README)]
PROSE = FENCE.sub("", README)
SPANS = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", PROSE)]


def _bash_commands() -> list[str]:
    commands = []
    for lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("simgan "):
                commands.append(line)
    return commands


def _without_comment(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


COMMANDS = _bash_commands()


def test_the_readme_has_the_commands_this_test_reads():
    assert len(COMMANDS) >= 30, COMMANDS
    assert sum(1 for s in SPANS if s.startswith("simgan ")) >= 20
    assert sum(1 for s in SPANS if re.match(r"python scripts/\w+\.py", s)) >= 5


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_line_of_the_readme_parses(command, capsys):
    argv = _without_comment(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README command does not parse (exit {exc.code}): {command}\n{capsys.readouterr().err}")
    assert args.command == argv[0]


def _span_flags_ok(span: str) -> list[str]:
    tokens = span.split()[1:]
    top = build_parser()
    parsers = [top]
    while tokens and not tokens[0].startswith("-"):
        word = tokens.pop(0)  # a (sub)command, "train|eval" for both, or a positional argument
        children = [_subparsers(p).get(name) for p in parsers for name in word.split("|")]
        if not all(children):
            if parsers == [top]:
                return [f"unknown command {word!r}"]
            break
        parsers = children
    flags = [t.strip("[]") for t in tokens if t.strip("[]").startswith("--")]
    return [f"{flag} ({p.prog})" for p in parsers for flag in flags if flag not in _options(p)]


@pytest.mark.parametrize("span", sorted({s for s in SPANS if s.startswith("simgan ")}))
def test_every_flag_named_in_the_readme_prose_exists(span):
    assert _span_flags_ok(span) == [], span


@pytest.mark.parametrize("span", sorted({s for s in SPANS if re.match(r"python scripts/\w+\.py", s)}))
def test_every_benchmark_command_in_the_readme_names_flags_its_script_takes(span):
    script = ROOT / span.split()[1]
    assert script.is_file(), span
    source = script.read_text()
    flags = {t.split("=")[0] for t in span.split()[2:] if t.startswith("--")}
    missing = sorted(flag for flag in flags if f'"{flag}"' not in source)
    assert missing == [], f"{span}: {script.name} has no {missing}"


def _python_calls() -> list[tuple[str, object, ast.Call]]:
    """(source text, callable, call node) of every call of a name imported in, or of ``simgan.X``, the README's
    Python blocks."""
    import simgan

    found = []
    for lang, body in BLOCKS:
        if lang != "python":
            continue
        tree = ast.parse(body)
        names: dict[str, object] = {"simgan": simgan}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"README imports {alias.name} from {node.module}"
                    names[alias.asname or alias.name] = getattr(module, alias.name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in names:
                target = names[func.id]
            elif (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "simgan"
            ):
                assert hasattr(simgan, func.attr), f"README calls simgan.{func.attr}, which does not exist"
                target = getattr(simgan, func.attr)
            else:
                continue
            found.append((ast.get_source_segment(body, node), target, node))
    return found


def test_every_call_in_the_readme_python_block_matches_its_signature():
    calls = _python_calls()
    assert len(calls) >= 15
    wrong = []
    for text, target, node in calls:
        signature = inspect.signature(target)
        placeholders = [None] * len(node.args)
        keywords = {k.arg: None for k in node.keywords if k.arg is not None}
        try:
            signature.bind(*placeholders, **keywords)
        except TypeError as exc:
            wrong.append(f"{text.splitlines()[0]}: {exc}")
    assert wrong == []
