"""``simgan loop``: the model-based loop (collect real data -> train a world model -> train the agent inside it).

    simgan loop --env Pendulum-v1 --iterations 5 --out runs/loop-pendulum
    simgan loop --env Pendulum-v1 --iterations 5 --model ensemble --algo sac --out runs/loop-ens
    simgan loop --env Pendulum-v1 --iterations 8 --out runs/loop-pendulum --resume     # continue a run

Wiring: :func:`simgan.loop.run_loop` (library) drives the iterations and knows agents only through the
:class:`simgan.loop.LoopAgent` protocol; this module implements that protocol with ``agents`` (SAC, PPO,
CEM-MPC). Arrows point one way: cli -> loop -> (collect, train, SimVectorEnv); cli -> agents.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

from simgan.errors import SimganError

# The MPC settings that runs from before their flags existed were made with: stored in a run only when changed,
# so those runs still resume (one place for the flags' defaults, the comparison and the agent's).
MPC_DEFAULT_PARTICLES = 1
MPC_DEFAULT_ITERATIONS = 5
# PPO learns from whole updates of many sub-envs, so it needs far more simulated steps per iteration than SAC:
# where these flags are not given, `--algo ppo` takes the bench_agents CartPole preset's values (README, CartPole:
# 475 on nine seeds of nine) and the other algorithms LoopConfig's defaults
PPO_DEFAULTS = {"sim_envs": 64, "rollout_horizon": 50, "agent_steps_per_iter": 1_000_000}


class LoopCLIError(SimganError):
    """Bad ``simgan loop`` arguments (e.g. an algorithm that does not fit the env's action space)."""


def add_parser(parser: argparse.ArgumentParser) -> None:
    from simgan.config import add_dataclass_arguments
    from simgan.loop import LoopConfig

    parser.add_argument("--env", dest="env_id", required=True, help="real gymnasium env id, e.g. Pendulum-v1")
    parser.add_argument("--out", required=True, help="run directory (iter-XXX/, progress.csv, tb/)")
    parser.add_argument(
        "--algo",
        choices=("sac", "ppo", "mpc"),
        default="sac",
        help="agent trained (or planning) in the model",
    )
    parser.add_argument(
        "--updates-per-step", type=float, default=0.25, help="SAC: gradient updates per simulated transition"
    )
    parser.add_argument(
        "--keep-best",
        action="store_true",
        help="SAC/PPO: after each iteration's training, keep the previous agent if it scores higher in the new "
        "learned env (same episodes, same seeds)",
    )
    parser.add_argument("--mpc-horizon", type=int, default=20, help="MPC: planning horizon")
    parser.add_argument("--mpc-population", type=int, default=100, help="MPC: CEM candidates per iteration")
    parser.add_argument(
        "--mpc-particles",
        type=int,
        default=MPC_DEFAULT_PARTICLES,
        help="MPC: learned-env samples per candidate, their returns averaged (PETS's particles: the model's "
        "futures differ from sample to sample)",
    )
    parser.add_argument(
        "--mpc-iterations",
        type=int,
        default=MPC_DEFAULT_ITERATIONS,
        help="MPC: CEM iterations per real action",
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster address; unset: $RAY_ADDRESS, else a local cluster"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out after its last iteration"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_arguments(parser, LoopConfig, exclude=("env_id",))
    for action in parser._actions:  # the algorithm picks these defaults (applied in run)
        if action.dest in PPO_DEFAULTS:
            action.help = (
                f"{action.help} (default: {loop_config_default(action.dest):,}; with --algo ppo "
                f"{PPO_DEFAULTS[action.dest]:,})"
            )
            action.default = None


def loop_config_default(name: str) -> Any:
    """LoopConfig's default for field ``name`` (what SAC and MPC loops take)."""
    from simgan.loop import LoopConfig

    return next(f.default for f in dataclasses.fields(LoopConfig) if f.name == name)


def apply_algo_defaults(args: argparse.Namespace) -> None:
    """Fill the flags of ``PPO_DEFAULTS`` that were not given: PPO's values for ``--algo ppo``, LoopConfig's
    defaults otherwise."""
    for name, ppo in PPO_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, ppo if args.algo == "ppo" else loop_config_default(name))


def run(args: argparse.Namespace) -> int:
    from envs import make_env
    from simgan.config import dataclass_from_namespace
    from simgan.device import resolve_device
    from simgan.loop import LoopConfig, run_loop

    apply_algo_defaults(args)
    config = dataclass_from_namespace(LoopConfig, args)
    if args.address and config.workers == 0:
        from simgan.cli import CLIError

        raise CLIError(
            "--address: expected --workers >= 1 (Ray workers to run on the cluster), got --workers 0"
        )
    if resolve_device(config.device).type == "cpu":
        import torch

        # Small MLPs run fastest single-threaded; extra threads spin against the Ray workers and the env.
        torch.set_num_threads(1)
    probe = make_env(config.env_id)  # unknown ids fail here with gymnasium's "did you mean"
    spaces = (probe.observation_space, probe.action_space)
    probe.close()
    agent = make_loop_agent(args.algo, *spaces, args=args, config=config, progress=not args.quiet)
    agent_params: dict[str, Any] = {"algo": args.algo}
    if args.algo == "sac":
        agent_params["updates_per_step"] = args.updates_per_step
    if args.algo in ("sac", "ppo") and args.keep_best:
        agent_params["keep_best"] = True
    if args.algo == "mpc":
        agent_params.update(horizon=args.mpc_horizon, population=args.mpc_population)
        if args.mpc_particles != MPC_DEFAULT_PARTICLES:
            agent_params["particles"] = args.mpc_particles
        if args.mpc_iterations != MPC_DEFAULT_ITERATIONS:
            agent_params["iterations"] = args.mpc_iterations
    records = run_loop(
        config,
        agent,
        args.out,
        resume=args.resume,
        address=args.address,
        progress=not args.quiet,
        agent_params=agent_params,
    )
    if records:
        last = records[-1]
        print(
            f"{len(records)} iterations in {args.out}: real return {last['eval_return_mean']:.1f} after "
            f"{last['real_steps']} real env steps (progress: {Path(args.out) / 'progress.csv'})"
        )
    return 0


def make_loop_agent(
    algo: str, observation_space: Any, action_space: Any, *, args: Any, config: Any, progress: bool
) -> Any:
    """The :class:`simgan.loop.LoopAgent` for ``algo``. Raises LoopCLIError when it cannot act in the env."""
    import gymnasium as gym

    from simgan.device import resolve_device

    device = resolve_device(config.device)
    continuous = isinstance(action_space, gym.spaces.Box)
    if algo in ("sac", "mpc") and not continuous:
        raise LoopCLIError(f"--algo {algo}: expected a Box action space, got {action_space} (use --algo ppo)")
    if algo == "mpc" and getattr(args, "keep_best", False):
        raise LoopCLIError(
            "--keep-best: expected --algo sac or ppo (agents trained in the model), got --algo mpc"
        )
    if algo == "mpc":
        settings = {
            "horizon": args.mpc_horizon,
            "population": args.mpc_population,
            "particles": args.mpc_particles,
            "iterations": args.mpc_iterations,
        }
        for name, value in settings.items():
            if value < 1:
                raise LoopCLIError(f"--mpc-{name}: expected an integer >= 1, got {value}")
        return MPCLoopAgent(observation_space, action_space, seed=config.seed, **settings)
    return GradientLoopAgent(
        algo,
        observation_space,
        action_space,
        device=device,
        updates_per_step=args.updates_per_step,
        keep_best=args.keep_best,
        progress=progress,
    )


# ---------------------------------------------------------------------------------------------------------------
# LoopAgent implementations
# ---------------------------------------------------------------------------------------------------------------


def _evaluate(policy: Any, env: Any, episodes: int, seed: int) -> tuple[float, float]:
    from agents import evaluate_policy

    result = evaluate_policy(policy, env, episodes=episodes, seed=seed, deterministic=True)
    return result.mean_return, result.std_return


class GradientLoopAgent:
    """SAC or PPO, trained a little more inside each iteration's learned env (MBPO's branched rollouts).

    The networks carry over from iteration to iteration; the replay buffer (SAC) is rebuilt from the new model's
    rollouts every iteration, as MBPO refreshes its model buffer. With ``keep_best``, an iteration's training is
    kept only if the trained agent scores at least as well as the one it started from, both evaluated in the new
    learned env over ``eval_episodes`` full episodes from the same seeds (a guard against a policy-gradient step
    that undoes the last iteration: PPO on CartPole swings by 100-150 return between iterations).
    """

    def __init__(
        self,
        algo: str,
        observation_space: Any,
        action_space: Any,
        *,
        device: Any,
        updates_per_step: float = 0.25,
        keep_best: bool = False,
        progress: bool = True,
    ) -> None:
        self.algo, self.device, self.progress = algo, device, progress
        self.observation_space, self.action_space = observation_space, action_space
        self.updates_per_step = updates_per_step
        self.keep_best = keep_best
        self.agent: Any = None

    def collection_policy(self, agent_dir: Path) -> Any:
        from simgan.cli.collect import SavedAgentPolicy

        return SavedAgentPolicy(agent_dir, self.observation_space, self.action_space)

    def improve(self, context: Any) -> dict[str, float]:
        import numpy as np

        from agents import PPOConfig, SACConfig, train_ppo, train_sac

        loop = context.config
        previous = copy.deepcopy(self.agent) if self.keep_best and self.agent is not None else None
        env = context.make_env(loop.sim_envs)
        if self.algo == "sac":
            first = self.agent is None
            config = replace(
                self.agent.config if not first else SACConfig(),
                total_steps=loop.agent_steps_per_iter,
                learning_starts=min(1000, loop.agent_steps_per_iter // 2) if first else 0,
                updates_per_step=self.updates_per_step,
                seed=context.seed,
            )
            result = train_sac(
                env,
                config,
                agent=self.agent,
                device=self.device,
                log_dir=context.log_dir,
                progress=self.progress,
            )
        else:
            base = self.agent.config if self.agent is not None else PPOConfig()
            config = replace(
                base,
                total_steps=loop.agent_steps_per_iter,
                num_steps=min(base.num_steps, loop.rollout_horizon * 4),
                seed=context.seed,
            )
            result = train_ppo(
                env,
                config,
                agent=self.agent,
                device=self.device,
                log_dir=context.log_dir,
                progress=self.progress,
            )
        env.close()
        self.agent = result.agent
        recent = result.episode_returns[-100:]
        scalars = {"sim_rollout_return": float(np.mean(recent)) if recent else float("nan")}
        if previous is not None:
            scalars.update(self._keep_better(previous, context))
        return scalars

    def _keep_better(self, previous: Any, context: Any) -> dict[str, float]:
        """Score the trained agent and ``previous`` in the learned env on the same seeds; keep the better."""
        episodes = context.config.eval_episodes
        scores = []
        for agent in (self.agent, previous):
            env = context.make_env(episodes, branched=False)
            try:
                scores.append(_evaluate(agent, env, episodes, seed=context.seed)[0])
            finally:
                env.close()
        kept_previous = scores[1] > scores[0]
        if kept_previous:
            self.agent = previous
        return {
            "sim_return_trained": scores[0],
            "sim_return_previous": scores[1],
            "kept_previous": float(kept_previous),
        }

    def evaluate(self, env: Any, episodes: int, seed: int) -> tuple[float, float]:
        return _evaluate(self.agent, env, episodes, seed)

    def save(self, directory: Path) -> None:
        self.agent.save(directory, metadata={"trained_by": "simgan loop"})

    def restore(self, directory: Path) -> None:
        from agents import load_agent

        self.agent = load_agent(directory, self.observation_space, self.action_space, device=self.device)


class MPCLoopAgent:
    """CEM-MPC (PETS): nothing to train; each iteration plans with the newest model.

    Its saved form is a planner directory (``mpc.json``: the settings and the model, :mod:`simgan.cli.policies`),
    which every command that takes a saved policy accepts.
    """

    def __init__(
        self,
        observation_space: Any,
        action_space: Any,
        *,
        horizon: int,
        population: int,
        seed: int,
        particles: int = MPC_DEFAULT_PARTICLES,
        iterations: int = MPC_DEFAULT_ITERATIONS,
    ):
        from simgan.cli.policies import planner_settings

        self.observation_space, self.action_space = observation_space, action_space
        self.settings = planner_settings(
            horizon=horizon, population=population, seed=seed, particles=particles, iterations=iterations
        )
        self.planner: Any = None
        self.model_dir: Path | None = None
        # the learned env's known functions and reward rounding (the loop's --known-*, --round-reward)
        self.sim_kwargs: dict[str, str] = {}

    def collection_policy(self, agent_dir: Path) -> Any:
        from simgan.cli.collect import SavedAgentPolicy

        return SavedAgentPolicy(agent_dir, self.observation_space, self.action_space)

    def improve(self, context: Any) -> dict[str, float]:
        from simgan.cli.policies import build_planner

        self.sim_kwargs = context.config.learned_env_kwargs()
        self.planner = build_planner(context.model, self.settings, sim_kwargs=self.sim_kwargs)
        self.model_dir = Path(context.model_dir)
        return {}

    def evaluate(self, env: Any, episodes: int, seed: int) -> tuple[float, float]:
        assert self.planner is not None
        return _evaluate(self.planner, env, episodes, seed)

    def save(self, directory: Path) -> None:
        from simgan.cli.policies import save_planner

        assert self.model_dir is not None
        save_planner(directory, self.model_dir, self.settings, sim_kwargs=self.sim_kwargs)

    def restore(self, directory: Path) -> None:
        from simgan.cli.policies import load_planner

        # the next improve() plans in its own model (and sets model_dir) before the loop saves again
        self.planner = load_planner(directory, self.observation_space, self.action_space)
