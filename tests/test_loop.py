"""The model-based loop: ``simgan loop`` end to end with tiny budgets (subprocess), resume, progress files,
dataset merging, and ``simgan collect --policy AGENT_DIR``."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simgan.errors import SimganError

ROOT = Path(__file__).resolve().parents[1]
# PYTHONPATH: Ray workers start outside the repository and must still import `agents` (saved-agent policies).
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
TINY = [
    "--env", "Pendulum-v1", "--real-steps-per-iter", "300", "--model-steps", "30", "--agent-steps-per-iter",
    "400", "--sim-envs", "8", "--rollout-horizon", "10", "--eval-episodes", "2", "--device", "cpu", "--quiet",
]  # fmt: skip


def simgan(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simgan", *args],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_progress(run: Path) -> list[dict[str, str]]:
    with open(run / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-iteration loop run (SAC + GAN, collection in-process)."""
    run = tmp_path_factory.mktemp("loop") / "run"
    result = simgan("loop", *TINY, "--iterations", "2", "--workers", "0", "--out", str(run), "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "2 iterations in" in result.stdout
    return run


# ---------------------------------------------------------------------------------------------------------------
# simgan loop
# ---------------------------------------------------------------------------------------------------------------


def test_loop_writes_progress_csv_tensorboard_and_iterations(loop_run: Path) -> None:
    from simgan.loop import CSV_COLUMNS

    rows = read_progress(loop_run)
    assert [int(r["iteration"]) for r in rows] == [0, 1]
    assert [int(r["real_steps"]) for r in rows] == [300, 600]  # the union of all real data so far
    assert tuple(rows[0]) == CSV_COLUMNS
    for row in rows:
        assert np.isfinite(float(row["eval_return_mean"])) and float(row["eval_return_mean"]) < 0  # Pendulum
    for i in (0, 1):
        it = loop_run / f"iter-{i:03d}"
        for part in ("data/manifest.json", "model/model.json", "agent/agent.json", "done.json"):
            assert (it / part).is_file(), part
    # the iterations' models skip the forecast-noise calibration; the last one gets it after the loop
    from simgan.forecast_calibration import is_forecast_calibrated

    assert [is_forecast_calibrated(loop_run / f"iter-{i:03d}" / "model") for i in (0, 1)] == [False, True]
    # iteration 1 collected with iteration 0's agent, and trained on the union of both datasets
    manifest = json.loads((loop_run / "iter-001" / "data" / "manifest.json").read_text())
    assert "SavedAgentPolicy" in manifest["policy"]
    union = json.loads((loop_run / "iter-001" / "union" / "manifest.json").read_text())
    assert union["num_transitions"] == 600 and len(union["merged_from"]) == 2
    # one real sub-env per worker by default: the first episode runs to Pendulum's 200-step limit rather than
    # being cut at the per-iteration budget / 8
    from simgan.data import load_dataset

    first = load_dataset(loop_run / "iter-000" / "data")
    assert first.manifest["envs_per_worker"] == 1
    _, lengths = np.unique(first.transitions.episode, return_counts=True)
    assert lengths.max() == 200

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(loop_run / "tb"))
    events.Reload()
    curve = events.Scalars("eval/real_return")
    assert [e.step for e in curve] == [300, 600]  # x axis: real env steps
    assert [e.value for e in curve] == pytest.approx([float(r["eval_return_mean"]) for r in rows], rel=1e-5)


def test_loop_refuses_a_used_directory_and_resume_continues(loop_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(loop_run, run)
    before = read_progress(run)

    again = simgan("loop", *TINY, "--iterations", "2", "--workers", "0", "--out", str(run), "--seed", "1")
    assert again.returncode == 2 and "not empty; pass --resume" in again.stderr

    other = simgan("loop", *TINY, "--iterations", "3", "--out", str(run), "--seed", "2", "--resume")
    assert other.returncode == 2 and "seed: stored 1, requested 2" in other.stderr
    other = simgan(
        "loop", *TINY, "--iterations", "3", "--out", str(run), "--seed", "1", "--algo", "ppo", "--resume"
    )
    assert other.returncode == 2 and "agent.algo: stored 'sac', requested 'ppo'" in other.stderr
    other = simgan(
        "loop", *TINY, "--iterations", "3", "--out", str(run), "--seed", "1", "--halt-unknown", "--resume"
    )
    assert other.returncode == 2 and "halt_unknown: stored False, requested True" in other.stderr
    params = json.loads((run / "loop.json").read_text())
    (run / "loop.json").write_text(json.dumps({**params, "agent.keep_best": True}))
    other = simgan("loop", *TINY, "--iterations", "3", "--out", str(run), "--seed", "1", "--resume")
    assert other.returncode == 2 and "agent.keep_best: stored True, requested None" in other.stderr
    (run / "loop.json").write_text(json.dumps(params))
    # a run started before a parameter existed did what its default does, and resumes
    params = json.loads((run / "loop.json").read_text())
    del params["halt_unknown"]
    (run / "loop.json").write_text(json.dumps(params))

    # killed while calibrating the last model: resuming with nothing left to run calibrates it
    model_json = run / "iter-001" / "model" / "model.json"
    stored = json.loads(model_json.read_text())
    calibrated = stored["config"]["noise_correlation"], stored["config"]["noise_spread"]
    del stored["metrics"]["forecast_band_coverage"]
    stored["config"].update(noise_correlation=0.0, noise_spread=1.0)
    model_json.write_text(json.dumps(stored))
    done = simgan(
        "loop", *TINY, "--iterations", "2", "--workers", "0", "--out", str(run), "--seed", "1", "--resume"
    )
    assert done.returncode == 0, done.stderr
    assert "forecast noise of" in done.stdout and "iter-001" in done.stdout
    stored = json.loads(model_json.read_text())
    assert "forecast_band_coverage" in stored["metrics"]
    assert (stored["config"]["noise_correlation"], stored["config"]["noise_spread"]) == calibrated
    assert read_progress(run) == before

    # a half-finished iteration (killed mid-way) is discarded and redone
    (run / "iter-002" / "data").mkdir(parents=True)
    (run / "iter-002" / "data" / "shard-w000-c00000.npz").write_bytes(b"partial")
    resumed = simgan(
        "loop", *TINY, "--iterations", "3", "--workers", "0", "--out", str(run), "--seed", "1", "--resume"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after iteration 1" in resumed.stdout
    after = read_progress(run)
    assert after[:2] == before  # finished iterations are kept as they were
    assert [int(r["real_steps"]) for r in after] == [300, 600, 900]
    # and the resumed iteration is what an uninterrupted run does (agent reloaded from its saved weights; the
    # optimisers and the replay buffer start afresh every iteration either way)
    whole = simgan(
        "loop", *TINY, "--iterations", "3", "--workers", "0", "--out", str(tmp_path / "whole"), "--seed", "1"
    )
    assert whole.returncode == 0, whole.stderr
    returns = ("eval_return_mean", "eval_return_std", "sim_return_mean")
    assert [[r[k] for k in returns] for r in read_progress(tmp_path / "whole")] == [
        [r[k] for k in returns] for r in after
    ]
    assert (run / "iter-002" / "done.json").is_file()
    from simgan.forecast_calibration import is_forecast_calibrated

    assert is_forecast_calibrated(run / "iter-002" / "model")


@pytest.mark.slow
@pytest.mark.ray
def test_loop_collects_through_ray_with_ppo(tmp_path: Path) -> None:
    run = tmp_path / "ppo"
    args = [a if a != "Pendulum-v1" else "CartPole-v1" for a in TINY]
    result = simgan(
        "loop", *args, "--iterations", "2", "--workers", "1", "--collect-envs", "3", "--algo", "ppo",
        "--out", str(run),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_progress(run)
    assert [int(r["real_steps"]) for r in rows] == [300, 600]
    assert all(float(r["eval_return_mean"]) >= 8 for r in rows)  # CartPole episodes last >= 8 steps
    manifest = json.loads((run / "iter-001" / "data" / "manifest.json").read_text())
    assert manifest["workers"] == 1 and "SavedAgentPolicy" in manifest["policy"]
    assert manifest["envs_per_worker"] == 3


def test_keep_best_keeps_whichever_agent_scores_higher_in_the_new_learned_env(tmp_path: Path) -> None:
    """--keep-best: from the second iteration on, the trained agent and the one it started from are scored in the
    new learned env; the saved agent is the trained one unless the previous one scored higher, and then it is
    exactly the previous agent (the same weights)."""
    run = tmp_path / "best"
    result = simgan("loop", *TINY, "--iterations", "3", "--workers", "0", "--keep-best", "--out", str(run))
    assert result.returncode == 0, result.stderr
    first = json.loads((run / "iter-000" / "done.json").read_text())["agent"]
    assert "kept_previous" not in first  # nothing to compare with yet
    for i in (1, 2):
        scalars = json.loads((run / f"iter-{i:03d}" / "done.json").read_text())["agent"]
        kept = scalars["sim_return_previous"] > scalars["sim_return_trained"]
        assert scalars["kept_previous"] == float(kept)
        before = (run / f"iter-{i - 1:03d}" / "agent" / "weights.safetensors").read_bytes()
        after = (run / f"iter-{i:03d}" / "agent" / "weights.safetensors").read_bytes()
        assert (after == before) == kept, scalars


def test_loop_rejects_sac_for_discrete_actions(tmp_path: Path) -> None:
    args = [a if a != "Pendulum-v1" else "CartPole-v1" for a in TINY]
    result = simgan("loop", *args, "--iterations", "1", "--algo", "sac", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "--algo sac: expected a Box action space" in result.stderr
    result = simgan("loop", *TINY, "--algo", "mpc", "--keep-best", "--out", str(tmp_path / "y"))
    assert result.returncode == 2
    assert "--keep-best: expected --algo sac or ppo" in result.stderr
    assert not (tmp_path / "y").exists()  # refused before anything was written
    result = simgan("loop", *TINY, "--algo", "mpc", "--mpc-particles", "0", "--out", str(tmp_path / "z"))
    assert result.returncode == 2 and "--mpc-particles: expected an integer >= 1, got 0" in result.stderr
    assert not (tmp_path / "z").exists()


def test_loop_config_validates() -> None:
    from simgan.loop import LoopConfig, LoopError

    with pytest.raises(LoopError, match="iterations: expected an integer >= 1, got 0"):
        LoopConfig(env_id="Pendulum-v1", iterations=0)
    with pytest.raises(LoopError, match="model: expected 'gan' or 'ensemble', got 'vae'"):
        LoopConfig(env_id="Pendulum-v1", model="vae")  # type: ignore[arg-type]
    with pytest.raises(LoopError, match="collect_envs: expected an integer >= 1, got 0"):
        LoopConfig(env_id="Pendulum-v1", collect_envs=0)
    with pytest.raises(LoopError, match="halt_unknown: expected a bool, got 1"):
        LoopConfig(env_id="Pendulum-v1", halt_unknown=1)  # type: ignore[arg-type]
    with pytest.raises(LoopError, match="known_reward: expected a bool, got 'yes'"):
        LoopConfig(env_id="Pendulum-v1", known_reward="yes")  # type: ignore[arg-type]
    with pytest.raises(LoopError, match=r"expected one of the env ids .* got 'HalfCheetah-v5'"):
        LoopConfig(env_id="HalfCheetah-v5", known_termination=True)  # refused before anything is written
    with pytest.raises(
        LoopError, match="round_reward: rounds the learned reward, so expected known_reward=False"
    ):
        LoopConfig(env_id="Pendulum-v1", known_reward=True, round_reward=True)
    assert LoopConfig(env_id="Pendulum-v1", initial_steps=50).steps_of(0) == 50
    assert LoopConfig(env_id="Pendulum-v1", initial_steps=50).steps_of(1) == 1000


@pytest.mark.parametrize(
    "halt, known_reward, known_termination, round_reward",
    [
        (False, False, False, False),
        (True, False, False, False),
        (False, True, False, False),
        (False, True, True, False),
        (False, False, True, True),
    ],
)
def test_the_agents_learned_envs_are_configured_by_the_loop(
    halt: bool, known_reward: bool, known_termination: bool, round_reward: bool, tmp_path: Path
) -> None:
    """halt_unknown, the known reward / termination and the rounded reward reach every learned env the agent is
    given."""
    import dataclasses

    from worldmodels import LinearModel, linear_info

    from envs.known import KNOWN
    from simgan.loop import LoopConfig, SimContext

    config = LoopConfig(
        env_id="Pendulum-v1",
        halt_unknown=halt,
        rollout_horizon=7,
        known_reward=known_reward,
        known_termination=known_termination,
        round_reward=round_reward,
    )
    values = np.array([-1.0, 0.0], dtype=np.float32)
    context = SimContext(
        model=LinearModel(  # a model of the loop's env, whose data's reward took two values
            dataclasses.replace(linear_info(), env_id="Pendulum-v1", reward_values=values)
        ),
        model_dir=tmp_path,
        start_states=np.zeros((5, 3), dtype=np.float32),
        config=config,
        iteration=0,
        seed=0,
        log_dir=tmp_path,
    )
    for env in (context.make_env(4), context.make_env(4, branched=False)):
        assert env.sim.halt_unknown is halt
        assert env.sim.reward_fn is (KNOWN["Pendulum-v1"].reward if known_reward else None)
        assert env.sim.termination_fn is (KNOWN["Pendulum-v1"].termination if known_termination else None)
        rounded = env.sim.reward_values
        assert (
            (rounded is not None and rounded.tolist() == values.tolist()) if round_reward else rounded is None
        )
    assert context.make_env(4).max_episode_steps == 7


def test_merge_datasets_keeps_episodes_apart(tmp_path: Path) -> None:
    from simgan.collection import collect
    from simgan.loop import merge_datasets

    a = collect("Pendulum-v1", steps=240, out=tmp_path / "a", seed=0, progress=False)
    b = collect("Pendulum-v1", steps=160, out=tmp_path / "b", seed=1, progress=False)
    assert set(np.unique(a.transitions.episode)) & set(np.unique(b.transitions.episode))  # ids collide
    merged = merge_datasets([a, b], tmp_path / "ab")
    assert len(merged) == 400
    assert merged.num_episodes == a.num_episodes + b.num_episodes
    np.testing.assert_array_equal(
        np.sort(merged.transitions.obs, axis=0),
        np.sort(np.concatenate([a.transitions.obs, b.transitions.obs]), axis=0),
    )
    c = collect("MountainCarContinuous-v0", steps=50, out=tmp_path / "c", progress=False)
    with pytest.raises(SimganError, match=r"differs from .* in \['env_id'"):
        merge_datasets([a, c], tmp_path / "ac")


# ---------------------------------------------------------------------------------------------------------------
# simgan collect --policy AGENT_DIR
# ---------------------------------------------------------------------------------------------------------------


def test_collect_with_a_saved_agent(loop_run: Path, tmp_path: Path) -> None:
    agent_dir = loop_run / "iter-001" / "agent"
    out = tmp_path / "ds"
    result = simgan(
        "collect", "--env", "Pendulum-v1", "--steps", "200", "--policy", str(agent_dir), "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_transitions"] == 200 and "SavedAgentPolicy" in manifest["policy"]


def test_saved_agent_policy_pickles_without_its_networks(loop_run: Path) -> None:
    import gymnasium as gym

    from simgan.cli.collect import SavedAgentPolicy

    env = gym.make("Pendulum-v1")
    policy = SavedAgentPolicy(loop_run / "iter-000" / "agent", env.observation_space, env.action_space)
    obs = np.zeros((3, 3), np.float32)
    data = pickle.dumps(policy)
    assert b"torch" not in data  # the path and spaces only; each Ray worker loads its own copy
    clone = pickle.loads(data)
    actions = clone(obs)
    assert actions.shape == (3, 1) and np.all(np.abs(actions) <= 2.0)
    deterministic = SavedAgentPolicy(
        loop_run / "iter-000" / "agent", env.observation_space, env.action_space, deterministic=True
    )
    np.testing.assert_array_equal(deterministic(obs), pickle.loads(pickle.dumps(deterministic))(obs))


@pytest.mark.parametrize(
    ("env_id", "policy", "message"),
    [
        ("Pendulum-v1", "no/such/agent", "--policy: expected 'random' or an agent directory"),
        ("MountainCarContinuous-v0", "AGENT", "observation space"),
    ],
)
def test_collect_policy_errors_are_clear(
    loop_run: Path, tmp_path: Path, env_id: str, policy: str, message: str
) -> None:
    policy = str(loop_run / "iter-000" / "agent") if policy == "AGENT" else policy
    result = simgan(
        "collect", "--env", env_id, "--steps", "10", "--policy", policy, "--out", str(tmp_path / "d")
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # nothing written


# ---------------------------------------------------------------------------------------------------------------
# simgan loop --algo mpc: the saved planner is a policy like an agent
# ---------------------------------------------------------------------------------------------------------------

MPC_TINY = [
    *TINY, "--algo", "mpc", "--mpc-horizon", "3", "--mpc-population", "8", "--mpc-particles", "2", "--workers", "0",
    "--eval-episodes", "1", "--known-reward",
]  # fmt: skip


@pytest.mark.slow
def test_mpc_loop_saves_a_planner_that_every_policy_flag_takes(tmp_path: Path) -> None:
    """The loop plans with CEM in each iteration's model; its saved planner (settings + the model, relative to
    the planner's directory) collects the next iteration's data (as ``collect --policy`` does), resumes the run,
    and is taken by ``agent eval --agent`` and ``forecast --policy``, from wherever the run directory is moved."""
    import shutil

    import gymnasium as gym

    from agents import SpaceMismatchError
    from envs.known import KNOWN
    from simgan.cli.policies import load_policy, planner_settings, read_planner

    run = tmp_path / "mpc"
    result = simgan("loop", *MPC_TINY, "--iterations", "1", "--out", str(run))
    assert result.returncode == 0, result.stderr
    stored = json.loads((run / "iter-000" / "agent" / "mpc.json").read_text())
    assert stored["model"] == "../model" and stored["format"] == 1
    assert stored["planner"] == planner_settings(horizon=3, population=8, seed=0, particles=2)
    assert stored["env"] == {"reward_fn": "known"}  # --known-reward: it plans with Pendulum's own reward
    assert json.loads((run / "loop.json").read_text())["agent.particles"] == 2

    moved = tmp_path / "elsewhere" / "mpc"
    shutil.move(str(run), str(moved))
    planner = moved / "iter-000" / "agent"
    assert read_planner(planner)[0].resolve() == (moved / "iter-000" / "model").resolve()
    resumed = simgan("loop", *MPC_TINY, "--iterations", "2", "--out", str(moved), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["real_steps"]) for r in read_progress(moved)] == [300, 600]
    at = MPC_TINY.index("--mpc-particles")
    other = simgan(
        "loop", *MPC_TINY[:at], *MPC_TINY[at + 2 :], "--iterations", "3", "--out", str(moved), "--resume"
    )
    assert other.returncode == 2 and "agent.particles: stored 2, requested None" in other.stderr
    manifest = json.loads((moved / "iter-001" / "data" / "manifest.json").read_text())
    assert "SavedAgentPolicy" in manifest["policy"]  # iteration 1 collected with iteration 0's planner

    # the same settings and seed plan the same actions, loaded twice
    env = gym.make("Pendulum-v1")
    obs = np.array([[0.6, 0.8, 0.5], [-1.0, 0.0, 0.0]], np.float32)
    first, second = (load_policy(planner, env.observation_space, env.action_space) for _ in range(2))
    actions = first.act(obs)
    assert actions.shape == (2, 1) and np.all(np.abs(actions) <= 2.0)
    np.testing.assert_array_equal(actions, second.act(obs))
    assert first.vector_env.sim.reward_fn is KNOWN["Pendulum-v1"].reward
    unknown = simgan(
        "loop", *MPC_TINY, "--no-known-reward", "--iterations", "3", "--out", str(moved), "--resume"
    )
    assert unknown.returncode == 2 and "known_reward: stored True, requested False" in unknown.stderr
    cartpole = gym.make("CartPole-v1")
    with pytest.raises(SpaceMismatchError, match=r"the planner's model .* was trained for observation space"):
        load_policy(planner, cartpole.observation_space, cartpole.action_space)

    evaluated = simgan("agent", "eval", "--agent", str(planner), "--env", "Pendulum-v1", "--episodes", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "mean return" in evaluated.stdout and "over 1 episodes" in evaluated.stdout
    forecast = simgan(
        "forecast", "--model", str(moved / "iter-001" / "model"), "--state", "[1, 0, 0]", "--horizon", "3",
        "--samples", "4", "--policy", str(planner), "--out", str(tmp_path / "fc"),
    )  # fmt: skip
    assert forecast.returncode == 0, forecast.stderr
    assert (tmp_path / "fc" / "forecast.npz").is_file()


def test_planner_files_are_checked_and_old_ones_still_load(tmp_path: Path) -> None:
    import simgan
    from simgan.cli.policies import PlannerLoadError, load_policy, planner_settings, save_planner

    data = simgan.collect("Pendulum-v1", steps=300, workers=0, out=tmp_path / "data", seed=0, progress=False)
    config = simgan.TrainConfig(steps=20, eval_every=20, figures=False, device="cpu")
    simgan.train(data, tmp_path / "model", config, progress=False)
    planner = tmp_path / "planner"
    save_planner(planner, tmp_path / "model", planner_settings(horizon=2, population=4, seed=1))
    assert load_policy(planner).population == 4

    # a planner saved before the format had a number: its model path as given, three settings
    old = tmp_path / "old"
    old.mkdir()
    (old / "mpc.json").write_text(
        json.dumps(
            {
                "algo": "mpc",
                "model_dir": str(tmp_path / "model"),
                "planner": {"horizon": 2, "population": 4, "seed": 1},
            }
        )
    )
    obs = np.array([0.6, 0.8, 0.5], np.float32)
    np.testing.assert_array_equal(load_policy(old).act(obs), load_policy(planner).act(obs))

    def refused(stored: object, message: str) -> None:
        (planner / "mpc.json").write_text(stored if isinstance(stored, str) else json.dumps(stored))
        with pytest.raises(PlannerLoadError, match=message):
            load_policy(planner)

    good = json.loads((planner / "mpc.json").read_text())
    # a planner of a loop run with --known-reward plans in a learned env paying Pendulum's own reward
    from envs.known import KNOWN

    settings = planner_settings(horizon=2, population=4, seed=1)
    save_planner(tmp_path / "known", tmp_path / "model", settings, sim_kwargs={"reward_fn": "known"})
    assert json.loads((tmp_path / "known" / "mpc.json").read_text())["env"] == {"reward_fn": "known"}
    assert "env" not in json.loads((planner / "mpc.json").read_text())  # nothing stored when nothing is known
    sim = load_policy(tmp_path / "known").vector_env.sim
    assert sim.reward_fn is KNOWN["Pendulum-v1"].reward and sim.termination_fn is None
    assert load_policy(planner).vector_env.sim.reward_fn is None

    refused("{not json", "expected a planner written by `simgan loop --algo mpc`")
    refused({**good, "format": 9}, "expected planner format 1, got 9")
    refused({**good, "model": "../nowhere"}, "found no model there")
    refused({**good, "planner": {**good["planner"], "depth": 3}}, r"got \['depth'\]")
    refused({k: v for k, v in good.items() if k != "algo"}, "algo 'mpc'")
    refused({**good, "planner": {"horizon": 2}}, "planner settings lack")
    refused({**good, "env": {"reward_fn": "learned"}}, r"expected env settings among \{'reward_fn': 'known'")
    refused({**good, "env": {"reward_values": "known"}}, r"'reward_values': 'data'\}, got \{'reward_values'")
    refused({**good, "env": {"dynamics": "known"}}, r"'termination_fn': 'known'.*got \{'dynamics': 'known'\}")
    refused({"algo": "mpc", "model_dir": str(tmp_path / "model"), "planner": {"horizon": 2}}, "incomplete")


def test_ppo_loops_default_to_the_cartpole_presets_simulated_budget() -> None:
    """`simgan loop --algo ppo` trains on 1,000,000 simulated steps of 64 sub-envs per iteration unless told
    otherwise (the bench_agents CartPole preset); SAC and MPC keep LoopConfig's defaults; a given flag wins."""
    from simgan.cli import build_parser
    from simgan.cli.loop import PPO_DEFAULTS, apply_algo_defaults
    from simgan.loop import LoopConfig

    def parsed(*flags: str) -> dict[str, int]:
        args = build_parser().parse_args(["loop", "--env", "CartPole-v1", "--out", "x", *flags])
        apply_algo_defaults(args)
        return {name: getattr(args, name) for name in PPO_DEFAULTS}

    base = LoopConfig(env_id="CartPole-v1")
    assert parsed("--algo", "ppo") == {
        "sim_envs": 64,
        "rollout_horizon": 50,
        "agent_steps_per_iter": 1_000_000,
    }
    for algo in ("sac", "mpc"):
        assert parsed("--algo", algo) == {name: getattr(base, name) for name in PPO_DEFAULTS}
    given = parsed("--algo", "ppo", "--sim-envs", "8", "--agent-steps-per-iter", "32")
    assert given == {"sim_envs": 8, "rollout_horizon": 50, "agent_steps_per_iter": 32}


def test_round_reward_on_a_continuous_reward_stops_before_training_a_model(tmp_path: Path) -> None:
    from simgan.loop import LoopConfig, LoopError, run_loop

    config = LoopConfig(env_id="Pendulum-v1", real_steps_per_iter=300, workers=0, round_reward=True)
    with pytest.raises(
        LoopError, match=r"round_reward: expected the data's reward to take a few values .* got"
    ):
        run_loop(config, agent=None, out=tmp_path / "run", progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "run" / "iter-000" / "model").exists()
    assert (tmp_path / "run" / "iter-000" / "data" / "manifest.json").is_file()
