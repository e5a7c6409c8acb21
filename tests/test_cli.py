"""Subprocess smoke tests of ``simgan collect`` and ``simgan info`` with tiny budgets."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def simgan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simgan", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def test_collect_help_explains_every_flag() -> None:
    result = simgan("collect", "--help")
    assert result.returncode == 0
    flags = set(re.findall(r"(--[a-z][a-z-]+)", result.stdout))
    expected = {
        "--env", "--steps", "--out", "--workers", "--seed", "--policy", "--envs-per-worker", "--env-kwargs",
        "--epsilon", "--action-noise", "--chunk-steps", "--address", "--resume", "--overwrite", "--no-progress",
    }  # fmt: skip
    assert expected <= flags
    # every flag has a help text
    from simgan.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["collect"]
    missing = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
    assert not missing


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every subcommand's parser, nested ones (``agent train``) included, by command line."""
    from simgan.cli import build_parser

    found, todo = [], [("simgan", build_parser())]
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


def test_help_states_each_default_once_and_never_none() -> None:
    parsers = _all_parsers()
    assert {"simgan collect", "simgan train", "simgan agent train", "simgan agent eval"} <= {
        n for n, _ in parsers
    }
    for name, parser in parsers:
        text = " ".join(parser.format_help().split())  # argparse wraps lines; compare one line
        assert "(default: None)" not in text, name
        assert "(default: False)" not in text, name
        # a help text that already gives its default gets no second one appended
        assert not re.search(r"default[^()]*\) \(default: ", text), (name, text)
    collect = dict(parsers)["simgan collect"].format_help()
    assert "(default: 0)" in " ".join(collect.split())  # --workers: an undocumented default is still shown


def test_collect_then_info(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = simgan(
        "collect", "--env", "Pendulum-v1", "--steps", "500", "--out", str(out), "--seed", "3",
        "--env-kwargs", '{"g": 9.81}', "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "transitions  500 in" in result.stdout
    assert 'Pendulum-v1 {"g": 9.81}' in result.stdout
    info = simgan("info", str(out))
    assert info.returncode == 0, info.stderr
    assert info.stdout.splitlines()[1:] == result.stdout.splitlines()[1:]  # same summary, same dataset


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "Pendulm-v1"], "Did you mean: `Pendulum`"),
        (
            ["--env", "Pendulum-v1", "--env-kwargs", "{g: 1}"],
            "--env-kwargs: expected a JSON object, got invalid",
        ),
        (["--env", "Pendulum-v1", "--env-kwargs", "[1]"], "--env-kwargs: expected a JSON object, got list"),
        (["--env", "Pendulum-v1", "--workers", "-2"], "workers: expected an integer >= 0, got -2"),
        (["--env", "Pendulum-v1", "--policy", "no/such/agent"], "expected 'random' or an agent directory"),
    ],
)
def test_collect_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "ds"
    result = simgan("collect", "--steps", "100", "--out", str(out), "--no-progress", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_collect_refuses_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    result = simgan(
        "collect", "--env", "CartPole-v1", "--steps", "100", "--out", str(tmp_path), "--no-progress"
    )
    assert result.returncode == 2 and "not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_info_on_a_path_with_neither_a_dataset_nor_a_model_exits_2(tmp_path: Path) -> None:
    result = simgan("info", str(tmp_path / "nowhere"))
    assert (
        result.returncode == 2
        and "or a model directory (model.json, by `simgan train`), got nothing there" in (result.stderr)
    )
    result = simgan("info", str(tmp_path))  # a directory that holds neither kind
    assert result.returncode == 2
    assert (
        "expected a dataset directory (manifest.json, written by `simgan collect`) or a model"
        in result.stderr
    )
    assert "got neither" in result.stderr
