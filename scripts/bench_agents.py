"""Benchmark: real env steps until an agent is good, model-based (``simgan loop``) against model-free.

    python scripts/bench_agents.py --envs Pendulum-v1 --seeds 1          # a modest run (about 30 min on 2 cores)
    python scripts/bench_agents.py                                        # all envs, 5 seeds (hours on a CPU)

Seeds can run as separate processes (one per core) and be merged into one table afterwards::

    python scripts/bench_agents.py --envs CartPole-v1 --seeds 2 --out /tmp/a                  # seeds 0, 1
    python scripts/bench_agents.py --envs CartPole-v1 --seeds 3 --first-seed 2 --out /tmp/b   # seeds 2, 3, 4
    python scripts/bench_agents.py --merge /tmp/a.json /tmp/b.json --out results/bench_agents_cartpole

For every env and seed, in the same run:

* ``loop-gan``: :func:`simgan.loop.run_loop` with the conditional GAN world model (SAC, or PPO for discrete
  actions, trained in MBPO-style branched rollouts of the learned env);
* ``loop-ensemble``: the same loop with the Gaussian-ensemble baseline model;
* ``model-free``: SAC (Box actions) or PPO (Discrete) trained on the real env alone.

Each method is evaluated every ``eval_every`` real steps (the loop: after each iteration) over 10 real episodes
(deterministic actions; evaluation episodes are not counted as real steps). Reported: the real env steps at
which the mean return first reaches the env's threshold (``None`` when it never does within the budget), and the
learning curves. Also: the Spearman rank correlation, over the saved policies of the run (the loop's
per-iteration agents and the model-free snapshots, saved every ``eval_every / 2`` real steps: >= 8 policies of
varying quality), between their mean return in the learned env (the last ``loop-gan`` model, full episodes from
dataset start states) and in the real env.

The loops stop at the threshold. ``--full-budget`` runs them to the preset budget instead (the steps to threshold
stay the first crossing), so the rank correlation rates the policies in a model trained on the whole budget's
data, and ``--resume --full-budget`` takes existing runs that stopped at the threshold on to the budget::

    python scripts/bench_agents.py --envs InvertedPendulum-v5 --methods loop-gan --full-budget --resume \
        --rank-episodes 100 --work-dir W --out /tmp/ip_full     # W: the run directories of an earlier run

Writes ``results/bench_agents.json``, ``results/bench_agents.md`` and ``results/bench_agents.png`` (atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents import PPOAgent, PPOConfig, SACAgent, SACConfig, evaluate_policy, load_agent, train_ppo, train_sac
from envs import make_env
from simgan.cli.loop import GradientLoopAgent
from simgan.fsutil import atomic_write_bytes, atomic_write_figure, atomic_write_json
from simgan.loop import LoopConfig, run_loop
from simgan.sim_vector_env import SimVectorEnv

ROOT = Path(__file__).resolve().parents[1]

# threshold, real-step budget (target), loop parameters, model-free budget and evaluation period
PRESETS: dict[str, dict[str, Any]] = {
    "Pendulum-v1": {
        "threshold": -200.0,
        "target_steps": 5_000,
        "loop": {
            # 250 real steps per iteration (500 before): the model and agent are refreshed twice as often per
            # real step, and the steps to threshold are counted at that granularity (model-free: eval_every)
            "iterations": 20,
            "real_steps_per_iter": 250,
            "rollout_horizon": 25,
            "sim_envs": 32,
            "agent_steps_per_iter": 12_000,
        },
        "model_steps": {"gan": 1500, "ensemble": 3000},
        "updates_per_step": 0.25,
        "model_free_steps": 20_000,
        "eval_every": 250,
    },
    "CartPole-v1": {
        "threshold": 475.0,
        "target_steps": 10_000,
        "loop": {
            "iterations": 10,
            "real_steps_per_iter": 1000,
            "rollout_horizon": 50,
            "sim_envs": 64,
            # 1,000,000 simulated steps (122 PPO updates of 64 x 128 steps) per iteration, 100,000 before: seeds
            # 0-8 all reach 475, against 4 of 9 (README, CartPole); 41-68 s of PPO per iteration on one thread
            "agent_steps_per_iter": 1_000_000,
        },
        "model_steps": {"gan": 2000, "ensemble": 3000},
        "updates_per_step": 0.25,
        "model_free_steps": 100_000,
        "eval_every": 1_000,  # the loop's granularity (1,000 real steps per iteration)
    },
    "InvertedPendulum-v5": {
        "threshold": 950.0,
        "target_steps": 15_000,
        "loop": {
            "iterations": 10,
            "real_steps_per_iter": 1500,
            "rollout_horizon": 25,
            "sim_envs": 64,
            "agent_steps_per_iter": 20_000,
        },
        "model_steps": {"gan": 2000, "ensemble": 3000},
        "updates_per_step": 0.25,
        "model_free_steps": 60_000,
        "eval_every": 2_500,
    },
}
METHODS = ("loop-gan", "loop-ensemble", "model-free")


class _TargetReached(Exception):
    """Stops model-free training once the evaluation reaches the threshold."""


class EvalEvery(gym.Wrapper):
    """Counts real env steps; every ``every`` steps evaluates ``agent`` on a separate env, and every ``every //
    2`` steps saves a snapshot of it (policies for the rank correlation: twice as many as evaluations, so a run
    that reaches the threshold early still leaves enough of them)."""

    def __init__(self, env: gym.Env, agent: Any, *, every: int, threshold: float, snapshots: Path, seed: int):
        super().__init__(env)
        self.agent, self.every, self.threshold = agent, every, threshold
        self.snapshot_every = max(1, every // 2)
        self.snapshots, self.seed = snapshots, seed
        self.steps, self.curve = 0, []
        self.eval_env = make_env(env.spec.id)

    def step(self, action: Any) -> Any:
        result = self.env.step(action)
        self.steps += 1
        if self.steps % self.snapshot_every == 0:
            self.agent.save(self.snapshots / f"step-{self.steps:07d}")
        if self.steps % self.every == 0:
            mean = evaluate_policy(
                self.agent, self.eval_env, episodes=10, seed=10_000 + self.seed
            ).mean_return
            self.curve.append((self.steps, mean))
            print(f"  model-free: {self.steps} real steps, real return {mean:.1f}", flush=True)
            if mean >= self.threshold:
                raise _TargetReached
        return result


def run_model_free(env_id: str, preset: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    env = make_env(env_id)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if discrete:
        config: Any = PPOConfig(total_steps=preset["model_free_steps"], seed=seed)
        agent: Any = PPOAgent(env.observation_space, env.action_space, config)
    else:
        config = SACConfig(total_steps=preset["model_free_steps"], seed=seed)
        agent = SACAgent(env.observation_space, env.action_space, config)
    wrapped = EvalEvery(
        env, agent, every=preset["eval_every"], threshold=preset["threshold"], snapshots=out, seed=seed
    )
    start = time.perf_counter()
    with contextlib.suppress(_TargetReached):
        (train_ppo if discrete else train_sac)(wrapped, config, agent=agent, progress=False)
    return {
        "curve": wrapped.curve,
        "seconds": time.perf_counter() - start,
        "algo": "ppo" if discrete else "sac",
    }


def run_loop_method(
    env_id: str,
    model: str,
    preset: dict[str, Any],
    seed: int,
    out: Path,
    *,
    full_budget: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """One ``simgan loop`` run with the preset's parameters; it stops at the threshold unless ``full_budget``
    (then it runs every preset iteration). ``resume`` continues the finished iterations already in ``out`` (e.g.
    a run that stopped at the threshold), which gives what an uninterrupted run gives; ``seconds`` is this call's
    time only."""
    config = LoopConfig(
        env_id=env_id,
        model=model,
        model_steps=preset["model_steps"][model],
        seed=seed,
        device="cpu",
        workers=1,
        **preset["loop"],
    )
    probe = make_env(env_id)
    discrete = isinstance(probe.action_space, gym.spaces.Discrete)
    agent = GradientLoopAgent(
        "ppo" if discrete else "sac",
        probe.observation_space,
        probe.action_space,
        device=torch.device("cpu"),
        updates_per_step=preset["updates_per_step"],
        keep_best=preset.get("keep_best", False),
        progress=False,
    )
    start = time.perf_counter()
    records = run_loop(
        config,
        agent,
        out,
        resume=resume,
        progress=False,
        stop_at_return=None if full_budget else preset["threshold"],
    )
    curve = [(r["real_steps"], r["eval_return_mean"]) for r in records]
    return {"curve": curve, "seconds": time.perf_counter() - start, "algo": agent.algo}


def preset_for(env_id: str, *, round_reward: bool = False) -> dict[str, Any]:
    """The env's preset; with ``round_reward`` its loops' learned envs round the learned reward to the data's
    values (``LoopConfig.round_reward``), which the results' stored preset then records."""
    preset = PRESETS[env_id]
    return {**preset, "loop": {**preset["loop"], "round_reward": True}} if round_reward else preset


def steps_to_threshold(curve: list[tuple[int, float]], threshold: float) -> int | None:
    return next((int(steps) for steps, value in curve if value >= threshold), None)


def rank_correlation(env_id: str, seed_dir: Path, episodes: int = 10) -> dict[str, Any]:
    """Spearman correlation of saved policies' mean return in the learned env vs the real env, each mean over
    ``episodes`` episodes (the same seeds for every policy).

    For an env with a known reward (``envs.known``), the policies are also rated in the same learned env paying
    that reward (``sim_known_reward``, ``spearman_known_reward``): the same trajectories (the reward does not
    steer the dynamics, and the termination stays the learned one), so the two figures differ only by the
    learned reward's error.

    For a reward that takes a few values in the model's data (InvertedPendulum's 0 and 1, CartPole's 1), they
    are rated a third time in the same learned env with its learned reward rounded to those values
    (``reward_values``; ``sim_rounded_reward``, ``spearman_rounded_reward``): the same trajectories again, and
    nothing the model did not learn from its data.
    """
    from scipy.stats import spearmanr

    from envs.known import KNOWN

    loop_dir = seed_dir / "loop-gan"
    last = sorted(loop_dir.glob("iter-*/model"))
    if not last:
        return {}
    policies = [
        *sorted(loop_dir.glob("iter-*/agent")),
        *sorted((seed_dir / "loop-ensemble").glob("iter-*/agent")),
        *sorted((seed_dir / "model-free").glob("step-*")),
    ]
    real_env = make_env(env_id)
    sim_kwargs = {"num_envs": min(episodes, 100), "device": "cpu", "compute_realism": False, "seed": 0}
    sim_env = SimVectorEnv(last[-1], **sim_kwargs)
    known_env = SimVectorEnv(last[-1], reward_fn="known", **sim_kwargs) if env_id in KNOWN else None
    values = data_reward_values(last[-1])
    rounded_env = None if values is None else SimVectorEnv(last[-1], reward_values=values, **sim_kwargs)
    rows = []
    for path in policies:
        agent = load_agent(path, real_env.observation_space, real_env.action_space)
        real = evaluate_policy(agent, real_env, episodes=episodes, seed=20_000).mean_return
        sim = evaluate_policy(agent, sim_env, episodes=episodes, seed=20_000)
        # sim_endings: how many learned-env episodes were cut short out of the data's support, and so on
        row = {
            "policy": str(path.relative_to(seed_dir)),
            "real": real,
            "sim": sim.mean_return,
            "sim_endings": sim.endings,
        }
        if known_env is not None:
            row["sim_known_reward"] = evaluate_policy(
                agent, known_env, episodes=episodes, seed=20_000
            ).mean_return
        if rounded_env is not None:
            row["sim_rounded_reward"] = evaluate_policy(
                agent, rounded_env, episodes=episodes, seed=20_000
            ).mean_return
        rows.append(row)
    if len(rows) < 3:
        return {"policies": rows}
    real = [r["real"] for r in rows]
    result = {
        "policies": rows,
        "spearman": float(spearmanr([r["sim"] for r in rows], real).statistic),
        "model": str(last[-1].relative_to(seed_dir)),
        "episodes": episodes,
    }
    if known_env is not None:
        rho = spearmanr([r["sim_known_reward"] for r in rows], real).statistic
        result["spearman_known_reward"] = float(rho)
    if rounded_env is not None:
        rho = spearmanr([r["sim_rounded_reward"] for r in rows], real).statistic
        result["spearman_rounded_reward"] = float(rho)
        result["reward_values"] = values.tolist()
    return result


def data_reward_values(model_dir: Path) -> np.ndarray | None:
    """The few values the reward took in the model's training data (``model.info.reward_values``), or None for
    a continuous reward. Models saved before simgan recorded them get the values from their loop iteration's
    dataset, computed as ``ModelInfo.from_dataset`` does."""
    from simgan.checkpoint import load_model_files
    from simgan.data import load_dataset
    from simgan.loop import training_data_dir
    from simgan.world_model import discrete_values

    info = load_model_files(model_dir).info
    if info.reward_values_recorded:
        return info.reward_values
    iteration = int(model_dir.parent.name.removeprefix("iter-"))
    data_dir = training_data_dir(model_dir.parent.parent, iteration)
    return discrete_values(load_dataset(data_dir).train.reward) if data_dir.is_dir() else None


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(results["envs"])
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        entry = results["envs"][env_id]
        for method, color in zip(METHODS, ("C0", "C1", "C2")):
            for k, run in enumerate(entry["runs"].get(method, [])):
                xs, ys = zip(*run["curve"]) if run["curve"] else ((), ())
                ax.plot(xs, ys, color=color, marker="o", ms=3, label=method if k == 0 else None)
        ax.axhline(entry["threshold"], color="gray", ls="--", lw=1, label="threshold")
        ax.axvline(entry["target_steps"], color="gray", ls=":", lw=1, label="target budget")
        ax.set(title=env_id, xlabel="real env steps", ylabel="mean real return (10 episodes)")
        ax.legend()
    fig.tight_layout()
    atomic_write_figure(fig, path)


def _seed_list(runs: list[dict[str, Any]]) -> str:
    """'3 (0, 1, 2)': how many seeds and which (runs written before runs recorded their seed: the count only)."""
    seeds = [r["seed"] for r in runs if "seed" in r]
    return f"{len(runs)} ({', '.join(map(str, seeds))})" if len(seeds) == len(runs) else str(len(runs))


def median_steps(hits: list[int | None]) -> str:
    """The median of the real steps to the threshold over seeds, a seed that never reached it counting as more
    than any step; with misses, how many ('4000 (1 of 5 not reached)'), and 'not reached' when the median seed
    missed."""
    if not hits:
        return "not reached"
    ordered = sorted(hits, key=lambda h: (h is None, h or 0))
    middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    misses = sum(h is None for h in hits)
    if any(h is None for h in middle):
        return "not reached"
    value = f"{np.mean(middle):.0f}"  # type: ignore[arg-type]
    return value if not misses else f"{value} ({misses} of {len(hits)} not reached)"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| env | method | algo | seeds | real steps to threshold (per seed) | median | target | wall s |",
        "|-|-|-|-|-|-|-|-|",
    ]
    for env_id, entry in results["envs"].items():
        for method in METHODS:
            runs = entry["runs"].get(method, [])
            if not runs:
                continue
            hits = [r["steps_to_threshold"] for r in runs]
            median = median_steps(hits)
            target = f">= {entry['threshold']:g} within {entry['target_steps']}"
            wall = np.mean([r["seconds"] for r in runs])
            lines.append(
                f"| {env_id} | {method} | {runs[0]['algo']} | {_seed_list(runs)} | {hits} | {median} | {target} "
                f"| {wall:.0f} |"
            )
    lines.append("")
    for env_id, entry in results["envs"].items():
        for seed, corr in entry.get("rank_correlation", {}).items():
            if "spearman" in corr:
                lines.append(
                    f"{env_id} seed {seed}: Spearman(learned-env return, real return) = {corr['spearman']:.3f} "
                    f"over {len(corr['policies'])} policies ({corr.get('episodes', 10)} episodes each)"
                    + _cut_short(corr)
                    + (f"; rated in {corr['model']}" if "model" in corr else "")
                    + (
                        f"; with the env's known reward: {corr['spearman_known_reward']:.3f}"
                        if "spearman_known_reward" in corr
                        else ""
                    )
                    + (
                        f"; with the learned reward rounded to the data's values {corr['reward_values']}: "
                        f"{corr['spearman_rounded_reward']:.3f}"
                        if "spearman_rounded_reward" in corr
                        else ""
                    )
                )
    return "\n".join(lines) + "\n"


def _cut_short(corr: dict[str, Any]) -> str:
    """ ", N of M learned-env episodes cut out of support" for a seed's rank correlation: returns the learned env
    rated on episodes it truncated where its model is unchecked (empty for results from before it was recorded)."""
    endings = [p["sim_endings"] for p in corr["policies"] if "sim_endings" in p]
    if not endings:
        return ""
    cut = sum(e.get("out_of_support", 0) for e in endings)
    total = len(endings) * corr.get("episodes", 10)
    return f"; {cut} of {total} learned-env episodes cut short out of support"


def read_results(path: str | Path) -> dict[str, Any]:
    """A results file written by this script, or SystemExit naming what is wrong with it."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"{path}: expected a bench_agents results JSON file, could not read it ({exc})"
        ) from exc
    envs = results.get("envs") if isinstance(results, dict) else None
    if (
        not isinstance(envs, dict)
        or "machine" not in results
        or not all(isinstance(e, dict) and {"preset", "runs"} <= e.keys() for e in envs.values())
    ):
        raise SystemExit(
            f"{path}: expected a bench_agents results file (keys 'machine' and 'envs', each env with "
            f"'preset' and 'runs'), got keys {sorted(results) if isinstance(results, dict) else type(results).__name__}"
        )
    return results


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several runs of this script (e.g. disjoint seeds run in parallel processes).

    Every env must have been run with the same preset in each part; a (method, seed) or a seed's rank
    correlation present in two parts is an error. Runs written before runs recorded their seed count from the
    part's first seed in order.
    """
    merged: dict[str, Any] = {"machine": parts[0]["machine"], "envs": {}}
    for part in parts:
        first = part.get("first_seed", 0)
        for env_id, entry in part["envs"].items():
            into = merged["envs"].setdefault(
                env_id,
                {**{k: v for k, v in entry.items() if k not in ("runs", "rank_correlation")}, "runs": {}},
            )
            if into["preset"] != entry["preset"]:
                raise SystemExit(
                    f"--merge: {env_id} was run with different presets: {into['preset']} and {entry['preset']}"
                )
            if into.get("full_budget", False) != entry.get("full_budget", False):
                raise SystemExit(
                    f"--merge: {env_id} was run both with and without --full-budget; expected one of them"
                )
            for method, runs in entry["runs"].items():
                have = into["runs"].setdefault(method, [])
                for k, run in enumerate(runs):
                    run = {**run, "seed": run.get("seed", first + k)}
                    if any(r["seed"] == run["seed"] for r in have):
                        raise SystemExit(
                            f"--merge: {env_id} {method} seed {run['seed']} is in more than one file"
                        )
                    have.append(run)
                have.sort(key=lambda r: r["seed"])
            correlations = into.setdefault("rank_correlation", {})
            for seed, corr in entry.get("rank_correlation", {}).items():
                if seed in correlations:
                    raise SystemExit(
                        f"--merge: {env_id} seed {seed}'s rank correlation is in more than one file"
                    )
                correlations[seed] = corr
            into["rank_correlation"] = dict(sorted(correlations.items(), key=lambda kv: int(kv[0])))
    merged["seeds"] = len(
        {r["seed"] for e in merged["envs"].values() for runs in e["runs"].values() for r in runs}
    )
    return merged


def write_report(results: dict[str, Any], out: Path) -> None:
    """OUT.md and OUT.png from ``results`` (OUT.json is written by whoever produced them), and the table.

    Results with no runs (``--rank-only``: rank correlations alone) have no learning curves, so no OUT.png.
    """
    atomic_write_bytes(out.with_suffix(".md"), markdown(results).encode())
    if any(entry["runs"] for entry in results["envs"].values()):
        write_plot(results, out.with_suffix(".png"))
    print(markdown(results))


def require_run_directories(args: argparse.Namespace, work: Path) -> None:
    """SystemExit naming the first run directory that ``--rank-only`` (the GAN loop's, to rank in) or
    ``--resume`` (each method's loop run, to continue) needs and WORK lacks, before any seed runs."""
    for env_id in args.envs:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            seed_dir = work / env_id / f"seed-{seed}"
            if args.rank_only and not (seed_dir / "loop-gan").is_dir():
                raise SystemExit(f"--rank-only: expected a run directory {seed_dir / 'loop-gan'}, found none")
            for method in args.methods if args.resume else []:
                if not (seed_dir / method / "loop.json").is_file():
                    raise SystemExit(
                        f"--resume: expected a loop run directory {seed_dir / method}, found none"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds per env and method")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run seeds FIRST_SEED .. FIRST_SEED + SEEDS - 1"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="merge these results files (disjoint seeds) into OUT instead of running",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_agents"), help="run directories")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_agents"), help="results path prefix")
    parser.add_argument(
        "--rank-episodes",
        type=int,
        default=10,
        help="episodes per policy, in each env, of the learned-vs-real rank correlation",
    )
    parser.add_argument(
        "--rank-only",
        action="store_true",
        help="train nothing: recompute the rank correlation of the seeds' existing run directories in WORK_DIR "
        "(e.g. with more --rank-episodes) and write OUT.json and OUT.md",
    )
    parser.add_argument(
        "--round-reward",
        action="store_true",
        help="the loops' agents train in learned envs that round the learned reward to the few values the data's "
        "reward took (simgan loop --round-reward; discrete rewards only: CartPole, InvertedPendulum)",
    )
    parser.add_argument(
        "--full-budget",
        action="store_true",
        help="the loops run all their preset iterations (the real-step budget) instead of stopping at the "
        "threshold; steps to threshold are still the first crossing, and the rank correlation rates the policies "
        "in the model trained on the whole budget",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the loops' run directories in WORK_DIR instead of starting them over (with --full-budget: "
        "take runs that stopped at the threshold on to the budget); loop methods only",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the table and plot from OUT.json (e.g. a partial run)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    results_json = out.with_suffix(".json")
    if args.merge:
        merged = merge_results([read_results(p) for p in args.merge])
        atomic_write_json(results_json, merged)
        write_report(merged, out)
        return
    if args.report_only:
        write_report(read_results(results_json), out)
        return
    torch.set_num_threads(1)  # small MLPs: fastest single-threaded on a shared CPU
    if args.rank_episodes < 1:
        raise SystemExit(f"--rank-episodes: expected a positive integer, got {args.rank_episodes}")
    if args.resume and "model-free" in args.methods:
        raise SystemExit(
            f"--resume: expected loop methods only (model-free runs cannot be continued), got --methods "
            f"{' '.join(args.methods)}"
        )

    work = Path(args.work_dir)
    require_run_directories(args, work)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "envs": {},
    }
    for env_id in args.envs:
        preset = preset_for(env_id, round_reward=args.round_reward)
        entry: dict[str, Any] = {
            "threshold": preset["threshold"],
            "target_steps": preset["target_steps"],
            "preset": preset,
            "full_budget": args.full_budget,
            "runs": {},
            "rank_correlation": {},
        }
        results["envs"][env_id] = entry
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            seed_dir = work / env_id / f"seed-{seed}"
            for method in [] if args.rank_only else args.methods:
                run_dir = seed_dir / method
                if not args.resume:
                    shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True, exist_ok=True)
                print(f"{env_id} seed {seed}: {method}", flush=True)
                if method == "model-free":
                    run = run_model_free(env_id, preset, seed, run_dir)
                else:
                    run = run_loop_method(
                        env_id,
                        method.split("-")[1],
                        preset,
                        seed,
                        run_dir,
                        full_budget=args.full_budget,
                        resume=args.resume,
                    )
                run["seed"] = seed
                run["steps_to_threshold"] = steps_to_threshold(run["curve"], preset["threshold"])
                entry["runs"].setdefault(method, []).append(run)
                print(
                    f"  -> {run['steps_to_threshold']} real steps to threshold ({run['seconds']:.0f}s)",
                    flush=True,
                )
                atomic_write_json(results_json, results)  # partial results survive an interruption
            entry["rank_correlation"][str(seed)] = rank_correlation(env_id, seed_dir, args.rank_episodes)
            atomic_write_json(results_json, results)  # now with this seed's rank correlation
    write_report(results, out)


if __name__ == "__main__":
    main()
