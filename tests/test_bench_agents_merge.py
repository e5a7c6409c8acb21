"""scripts/bench_agents.py --merge: seeds run in separate processes become one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import SCRIPTS, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_agents")


def _part(first_seed: int, seeds: int, *, record_seed: bool = True, preset: dict | None = None) -> dict:
    runs = [
        {
            "curve": [[1000, 100.0 + s], [2000, 500.0]],
            "seconds": 1.0,
            "algo": "ppo",
            "steps_to_threshold": 2000,
        }
        | ({"seed": s} if record_seed else {})
        for s in range(first_seed, first_seed + seeds)
    ]
    entry = {
        "threshold": 475.0,
        "target_steps": 10_000,
        "preset": preset or {"threshold": 475.0},
        "runs": {"loop-gan": runs},
        "rank_correlation": {
            str(s): {"policies": [], "spearman": 0.5} for s in range(first_seed, first_seed + seeds)
        },
    }
    return {
        "machine": {"threads": 1},
        "seeds": seeds,
        "first_seed": first_seed,
        "envs": {"CartPole-v1": entry},
    }


def test_merge_orders_disjoint_seeds_and_reports_them(bench) -> None:
    merged = bench.merge_results(
        [_part(2, 3), _part(0, 2, record_seed=False)]
    )  # an older file: seeds by order
    entry = merged["envs"]["CartPole-v1"]
    assert [r["seed"] for r in entry["runs"]["loop-gan"]] == [0, 1, 2, 3, 4]
    assert list(entry["rank_correlation"]) == ["0", "1", "2", "3", "4"] and merged["seeds"] == 5
    assert "| 5 (0, 1, 2, 3, 4) |" in bench.markdown(merged)
    # a correlation says over how many episodes per policy it was measured (files before that: 10)
    entry["rank_correlation"]["4"]["episodes"] = 100
    shown = bench.markdown(merged)
    assert (
        "seed 3: Spearman(learned-env return, real return) = 0.500 over 0 policies (10 episodes each)"
        in shown
    )
    assert (
        "seed 4: Spearman(learned-env return, real return) = 0.500 over 0 policies (100 episodes each)"
        in shown
    )


def test_merge_refuses_overlapping_seeds_and_different_presets(bench) -> None:
    with pytest.raises(SystemExit, match="loop-gan seed 1 is in more than one file"):
        bench.merge_results([_part(0, 2), _part(1, 2)])
    with pytest.raises(SystemExit, match="different presets"):
        bench.merge_results([_part(0, 1), _part(1, 1, preset={"threshold": 400.0})])


def test_reading_a_file_that_is_not_results_names_what_was_expected(bench, tmp_path: Path) -> None:
    other = tmp_path / "fidelity.json"
    other.write_text(json.dumps({"envs": {"Pendulum-v1": {"metrics": {}}}}))
    with pytest.raises(SystemExit, match=r"expected a bench_agents results file.*got keys \['envs'\]"):
        bench.read_results(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit, match="could not read it"):
        bench.read_results(broken)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_part(0, 1)))
    assert bench.read_results(good)["envs"]["CartPole-v1"]["preset"] == {"threshold": 475.0}


@pytest.mark.parametrize(
    ("hits", "expected"),
    [
        ([4000, 4000, 4000, 5000, None], "4000 (1 of 5 not reached)"),
        ([4000, None, 4000, None, None], "not reached"),  # the median seed missed
        ([9000, 5000, 16000, 12000, 4000], "9000"),
        ([1000, 3000], "2000"),
        ([1000, None], "not reached"),
        ([], "not reached"),
    ],
)
def test_the_median_counts_a_seed_that_never_reached_the_threshold_as_slower_than_all(
    bench, hits, expected
) -> None:
    assert bench.median_steps(hits) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--rank-only"],
            "--rank-only: expected a run directory {work}/CartPole-v1/seed-0/loop-gan, found none",
        ),
        (["--rank-episodes", "0"], "--rank-episodes: expected a positive integer, got 0"),
        (
            ["--resume"],
            "--resume: expected loop methods only (model-free runs cannot be continued), got --methods "
            "loop-gan loop-ensemble model-free",
        ),
        (
            ["--resume", "--methods", "loop-gan"],
            "--resume: expected a loop run directory {work}/CartPole-v1/seed-0/loop-gan, found none",
        ),
    ],
)
def test_rank_only_and_rank_episodes_refuse_what_they_cannot_use(tmp_path: Path, flags, expected) -> None:
    import subprocess
    import sys

    work, out = tmp_path / "work", tmp_path / "out"
    command = [
        sys.executable,
        str(SCRIPTS / "bench_agents.py"),
        "--envs",
        "CartPole-v1",
        "--seeds",
        "1",
        "--work-dir",
        str(work),
    ]
    done = subprocess.run(
        [*command, "--out", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and expected.format(work=work) in done.stderr
    assert not out.with_suffix(".json").exists() and not work.exists()  # nothing written, nothing trained


def test_rank_only_results_get_a_table_and_no_plot(bench, tmp_path: Path) -> None:
    part = _part(0, 2)
    part["envs"]["CartPole-v1"]["runs"] = {}  # what --rank-only writes: correlations alone
    bench.write_report(bench.merge_results([part]), tmp_path / "rank")
    assert "seed 1: Spearman" in (tmp_path / "rank.md").read_text()
    assert not (tmp_path / "rank.png").exists()


def test_the_report_says_how_many_learned_env_episodes_were_cut_out_of_support(bench) -> None:
    part = _part(0, 2)
    ranked = [{"policy": f"p{k}", "real": k, "sim": k} for k in range(3)]
    part["envs"]["CartPole-v1"]["rank_correlation"] = {
        "0": {"policies": ranked, "spearman": 1.0, "episodes": 10},  # recorded before the endings were
        "1": {
            "policies": [
                {**p, "sim_endings": {"truncated": 10, "out_of_support": k}} for k, p in enumerate(ranked)
            ],
            "spearman": 1.0,
            "episodes": 10,
        },
    }
    lines = bench.markdown(part).splitlines()
    assert lines[-2].endswith("(10 episodes each)")
    assert lines[-1].endswith("(10 episodes each); 3 of 30 learned-env episodes cut short out of support")


def test_model_free_runs_save_a_policy_every_half_evaluation_period(bench, tmp_path: Path) -> None:
    from agents import PPOAgent, PPOConfig, load_agent
    from envs import make_env

    env = make_env("CartPole-v1")
    agent = PPOAgent(env.observation_space, env.action_space, PPOConfig(seed=0))
    wrapped = bench.EvalEvery(env, agent, every=4, threshold=1e9, snapshots=tmp_path, seed=0)
    wrapped.reset(seed=0)
    for _ in range(12):
        _, _, terminated, truncated, _ = wrapped.step(env.action_space.sample())
        if terminated or truncated:
            wrapped.reset()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step-{k:07d}" for k in (2, 4, 6, 8, 10, 12)]
    assert [steps for steps, _ in wrapped.curve] == [4, 8, 12]
    assert all(mean > 0 for _, mean in wrapped.curve)  # CartPole pays 1 per step: real evaluations ran
    restored = load_agent(tmp_path / "step-0000006", env.observation_space, env.action_space)
    obs = env.reset(seed=1)[0][None]
    assert restored.act(obs, deterministic=True) == agent.act(obs, deterministic=True)


def test_merge_refuses_runs_with_and_without_full_budget(bench) -> None:
    full = _part(2, 1)
    full["envs"]["CartPole-v1"]["full_budget"] = True
    with pytest.raises(SystemExit, match="run both with and without --full-budget"):
        # the first part predates the flag: its loops stopped at the threshold
        bench.merge_results([_part(0, 2), full])


def test_the_report_names_the_model_that_rated_the_policies(bench) -> None:
    part = _part(0, 1)
    ranked = [{"policy": f"p{k}", "real": k, "sim": k} for k in range(3)]
    part["envs"]["CartPole-v1"]["rank_correlation"] = {
        "0": {"policies": ranked, "spearman": 1.0, "episodes": 10, "model": "loop-gan/iter-009/model"}
    }
    last = bench.markdown(part).splitlines()[-1]
    assert last.endswith("(10 episodes each); rated in loop-gan/iter-009/model")


@pytest.mark.slow
def test_a_loop_stopped_at_the_threshold_resumes_to_its_full_budget(bench, tmp_path: Path) -> None:
    """--full-budget --resume: a run that stopped at the threshold goes on to the budget, its first iteration
    kept as it was (real Ray collection; that a resumed loop gives what an uninterrupted one gives is
    tests/test_loop.py's)."""
    preset = {
        "threshold": -1e9,  # reached by the first iteration
        "loop": {
            "iterations": 2,
            "real_steps_per_iter": 300,  # two Pendulum episodes: one for validation
            "rollout_horizon": 10,
            "sim_envs": 8,
            "agent_steps_per_iter": 300,
            "eval_episodes": 2,
        },
        "model_steps": {"gan": 30},
        "updates_per_step": 0.25,
    }
    run = tmp_path / "seed-0" / "loop-gan"
    stopped = bench.run_loop_method("Pendulum-v1", "gan", preset, 0, run)
    assert [steps for steps, _ in stopped["curve"]] == [300]
    again = bench.run_loop_method("Pendulum-v1", "gan", preset, 0, run, resume=True)
    assert again["curve"] == stopped["curve"]  # resumed without --full-budget: the threshold was reached
    assert not (run / "iter-001").exists()
    resumed = bench.run_loop_method("Pendulum-v1", "gan", preset, 0, run, full_budget=True, resume=True)
    assert [steps for steps, _ in resumed["curve"]] == [300, 600]
    assert resumed["curve"][0] == stopped["curve"][0]
    assert (run / "iter-001" / "agent").is_dir()  # the second iteration's agent, to be ranked

    # ranked in the last model, with its learned reward and with Pendulum's own (a third policy: an untrained SAC)
    from agents import SACAgent, SACConfig
    from envs import make_env

    env = make_env("Pendulum-v1")
    SACAgent(env.observation_space, env.action_space, SACConfig(seed=0)).save(
        tmp_path / "seed-0" / "model-free" / "step-0000001"
    )
    ranked = bench.rank_correlation("Pendulum-v1", tmp_path / "seed-0", episodes=2)
    assert [p["policy"] for p in ranked["policies"]] == [
        "loop-gan/iter-000/agent",
        "loop-gan/iter-001/agent",
        "model-free/step-0000001",
    ]
    assert ranked["model"] == "loop-gan/iter-001/model"
    assert -1.0 <= ranked["spearman"] <= 1.0 and -1.0 <= ranked["spearman_known_reward"] <= 1.0
    for policy in ranked["policies"]:
        # Pendulum pays -(theta^2 + 0.1 thdot^2 + 0.001 u^2) >= -16.3 a step over 200 steps; a 30-step GAN's
        # learned reward is bound by nothing
        assert -16.3 * 200 <= policy["sim_known_reward"] <= 0.0
        assert policy["sim_known_reward"] != policy["sim"]


def test_the_report_gives_the_rank_correlation_with_the_rounded_reward(bench) -> None:
    part = _part(0, 1)
    ranked = [{"policy": f"p{k}", "real": k, "sim": k, "sim_rounded_reward": k} for k in range(3)]
    part["envs"]["CartPole-v1"]["rank_correlation"] = {
        "0": {
            "policies": ranked,
            "spearman": 0.5,
            "episodes": 10,
            "spearman_rounded_reward": 1.0,
            "reward_values": [1.0],
        }
    }
    last = bench.markdown(part).splitlines()[-1]
    assert last.endswith("; with the learned reward rounded to the data's values [1.0]: 1.000")


def test_the_rounded_values_come_from_the_model_or_for_older_models_its_iterations_data(
    bench, tmp_path: Path
) -> None:
    """A model records the values of its data's discrete reward; for one saved before it did, the bench reads
    them from the dataset its loop iteration trained on (iteration 0: its own collection)."""
    import shutil

    import simgan
    from simgan.checkpoint import load_model_files
    from simgan.ensemble_training import EnsembleConfig, train_ensemble

    iteration = tmp_path / "loop-gan" / "iter-000"
    data = simgan.collect("CartPole-v1", steps=400, workers=0, out=iteration / "data", seed=0, progress=False)
    config = EnsembleConfig(members=2, elites=1, hidden=(8,), steps=5, seed=0, progress=False)
    train_ensemble(data, out=iteration / "model", config=config)
    assert bench.data_reward_values(iteration / "model").tolist() == [1.0]

    old = iteration.parent / "iter-001"  # the same model as saved before values were recorded
    shutil.copytree(iteration / "model", old / "model")
    meta = json.loads((old / "model" / "model.json").read_text())
    del meta["info"]["reward_values"]
    (old / "model" / "model.json").write_text(json.dumps(meta))
    assert load_model_files(old / "model").info.reward_values is None  # as a model saved before
    assert bench.data_reward_values(old / "model") is None  # iteration 1 trains on union/: not there
    simgan.collect("CartPole-v1", steps=100, workers=0, out=old / "union", seed=1, progress=False)
    assert bench.data_reward_values(old / "model").tolist() == [1.0]


def test_round_reward_reaches_the_loops_config_and_the_stored_preset(bench) -> None:
    from simgan.loop import LoopConfig

    plain = bench.preset_for("InvertedPendulum-v5")
    rounded = bench.preset_for("InvertedPendulum-v5", round_reward=True)
    assert "round_reward" not in plain["loop"] and plain is bench.PRESETS["InvertedPendulum-v5"]
    assert rounded["loop"] == {**plain["loop"], "round_reward": True}
    config = LoopConfig(env_id="InvertedPendulum-v5", **rounded["loop"])
    assert config.learned_env_kwargs() == {"reward_values": "data"}
