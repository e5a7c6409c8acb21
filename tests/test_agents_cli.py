"""End-to-end ``simgan agent train|eval`` in subprocesses with tiny budgets (real envs; --sim is the lead's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def simgan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simgan", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_train_eval_ppo_cartpole(tmp_path):
    out = tmp_path / "ppo"
    done = simgan(
        "train",
        "--algo",
        "ppo",
        "--env",
        "CartPole-v1",
        "--steps",
        "512",
        "--num-envs",
        "2",
        "--out",
        str(out),
        "--seed",
        "1",
        "--device",
        "cpu",
        "--eval-episodes",
        "2",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert "eval on CartPole-v1: mean return" in done.stdout
    spec = json.loads((out / "agent.json").read_text())
    assert (
        spec["algo"] == "ppo" and spec["config"]["total_steps"] == 512 and spec["metadata"]["num_envs"] == 2
    )
    assert list((out / "tensorboard").iterdir())

    done = simgan(
        "eval",
        "--agent",
        str(out),
        "--env",
        "CartPole-v1",
        "--episodes",
        "3",
        "--json",
        str(tmp_path / "eval.json"),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert len(result["returns"]) == 3 and result["mean_return"] > 0

    done = simgan("eval", "--agent", str(out), "--env", "Pendulum-v1")
    assert done.returncode == 2
    assert "agent was trained for observation space" in done.stderr and "Traceback" not in done.stderr


def test_train_sac_pendulum_and_errors(tmp_path):
    out = tmp_path / "sac"
    done = simgan(
        "train",
        "--algo",
        "sac",
        "--env",
        "Pendulum-v1",
        "--steps",
        "300",
        "--learning-starts",
        "250",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--eval-episodes",
        "1",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "agent.json").read_text())["algo"] == "sac"

    done = simgan("eval", "--agent", str(tmp_path / "missing"), "--env", "Pendulum-v1")
    assert done.returncode == 2 and "expected an agent directory with agent.json" in done.stderr

    done = simgan(
        "train", "--algo", "sac", "--sim", str(tmp_path / "no-model"), "--steps", "10", "--out", str(out)
    )
    assert done.returncode == 2 and "--sim: expected a model directory" in done.stderr

    done = simgan(
        "train", "--algo", "sac", "--env", "Pendulum-v1", "--halt-unknown", "--steps", "10", "--out", str(out)
    )
    assert done.returncode == 2
    assert "--halt-unknown: expected --sim (a learned env), got --env Pendulum-v1" in done.stderr

    done = simgan("eval", "--agent", str(out), "--env", "Pendulum-v1", "--known-termination")
    assert done.returncode == 2
    assert "--known-termination: expected --sim (a learned env), got --env Pendulum-v1" in done.stderr
    done = simgan("eval", "--agent", str(out), "--env", "Pendulum-v1", "--round-reward")
    assert done.returncode == 2 and "--round-reward: expected --sim (a learned env)" in done.stderr
    done = simgan("eval", "--agent", str(out), "--sim", str(tmp_path), "--round-reward", "--known-reward")
    assert (
        done.returncode == 2
        and "round_reward: rounds the learned reward, so expected known_reward=False" in (done.stderr)
    )

    done = simgan("train", "--algo", "sac", "--env", "Pendulum-v2", "--steps", "10", "--out", str(out))
    assert done.returncode == 2 and "`v1`" in done.stderr  # gymnasium's "did you mean" (v1 exists)
