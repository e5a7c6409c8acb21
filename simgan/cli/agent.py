"""``simgan agent train|eval``: train an RL agent in a real env or inside a learned one, and evaluate it.

    simgan agent train --algo sac --env Pendulum-v1 --steps 5000 --out runs/sac-pendulum
    simgan agent train --algo sac --sim runs/pendulum-gan --num-envs 256 --steps 200000 --out runs/sac-sim
    simgan agent eval --agent runs/sac-sim --env Pendulum-v1 --episodes 10
    simgan agent eval --agent runs/sac-sim --sim runs/pendulum-gan --num-envs 64 --episodes 1000 --shards 4

This module is where simgan and ``agents`` meet: real envs come from ``envs.make_env``, learned ones from the
registered ``simgan/Sim-v0`` id; ``agents`` itself knows only gymnasium.

``eval --shards S`` splits the episodes over S Ray actors (:func:`simgan.shards.run_shards`): shard k takes
a contiguous block of ``split_evenly(episodes, S)[k]`` episodes, builds its own env (``--num-envs`` sub-envs) and
loads the agent from ``--agent``, and runs the same ``agents.evaluate_policy`` with seed ``--seed + first episode
index of its block``; returns and lengths are joined in shard order. With a single env (``--num-envs 1``) episode i
is reset with ``seed + i`` wherever it runs, so the episodes are exactly the in-process ones for any S; with a
vector env each shard's reset seed starts its own stream, so only S=1 repeats the in-process run exactly (for
S > 1: the same statistics over different, equally likely episodes). Seeding by shard index (seed + k) instead
would make shard k's single-env episodes repeat shard 0's. With ``--stochastic`` shard k > 0 also reseeds the
agent's action sampling (its seed + k), so only S=1 repeats an in-process stochastic run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from simgan.cli.shards import add_shard_arguments, check_shard_arguments, reseed_for_shard, shard_device
from simgan.errors import SimganError

SIM_ENV_ID = "simgan/Sim-v0"


class AgentCLIError(SimganError):
    """Bad ``simgan agent`` arguments (e.g. neither --env nor --sim)."""


def _add_env_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--env", help="a real gymnasium env id, e.g. Pendulum-v1 (built with envs.make_env)")
    source.add_argument(
        "--sim", metavar="RUN", help="a model directory: run inside the learned env simgan/Sim-v0"
    )
    parser.add_argument(
        "--num-envs",
        type=int,
        default=1,
        help="parallel sub-envs (a vector env when > 1; default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of networks, env resets and sampling (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    add_known_args(parser)


def add_known_args(parser: argparse.ArgumentParser) -> None:
    """--known-reward / --known-termination: the learned env takes its source env's own functions;
    --round-reward: it rounds its learned reward to the data's few values."""
    parser.add_argument(
        "--known-reward",
        action="store_true",
        help="the learned env pays the source env's own reward instead of the learned one (envs.known: "
        "Pendulum, CartPole, Acrobot, MountainCar, InvertedPendulum, simgan's multimodal envs)",
    )
    parser.add_argument(
        "--known-termination",
        action="store_true",
        help="the learned env ends episodes by the source env's own termination instead of the learned one",
    )
    parser.add_argument(
        "--round-reward",
        action="store_true",
        help="the learned env rounds its learned reward to the few values the model's training data took "
        "(reward_values='data'; `simgan info MODEL` lists them): for discrete rewards such as CartPole's 1",
    )


KNOWN_FLAGS = {
    "--known-reward": "known_reward",
    "--known-termination": "known_termination",
    "--round-reward": "round_reward",
}
LABELS = {
    "reward_fn": "known reward",
    "termination_fn": "known termination",
    "reward_values": "rounded reward",
}


def check_known_args(args: argparse.Namespace) -> None:
    """--known-reward / --known-termination / --round-reward need a learned env (--sim). (--round-reward with
    --known-reward is refused by :func:`simgan.sim_batch.learned_env_kwargs`.)"""
    known = [flag for flag, attr in KNOWN_FLAGS.items() if getattr(args, attr, False)]
    if known and args.sim is None:
        raise AgentCLIError(f"{known[0]}: expected --sim (a learned env), got --env {args.env}")


def known_label(args: argparse.Namespace) -> str:
    """' (known reward, known termination)' for the flags given, '' for none: where a printed result came from."""
    names = [LABELS[name] for name in known_kwargs(args)]
    return f" ({', '.join(names)})" if names else ""


def known_kwargs(args: argparse.Namespace) -> dict[str, str]:
    """reward_fn / termination_fn / reward_values keyword arguments of the learned env for --known-reward,
    --known-termination and --round-reward."""
    from simgan.sim_batch import learned_env_kwargs

    return learned_env_kwargs(
        getattr(args, "known_reward", False),
        getattr(args, "known_termination", False),
        getattr(args, "round_reward", False),
    )


def add_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    train = sub.add_parser(
        "train", help="train an agent (SAC or PPO)", formatter_class=parser.formatter_class
    )
    train.add_argument("--algo", choices=["sac", "ppo"], required=True, help="learning algorithm")
    _add_env_args(train)
    train.add_argument("--steps", type=int, required=True, help="env transitions to train for (all sub-envs)")
    train.add_argument("--out", required=True, help="agent directory to write (agent.json + safetensors)")
    train.add_argument("--log-dir", help="TensorBoard directory (default: OUT/tensorboard/<run name>)")
    train.add_argument(
        "--updates-per-step", type=float, help="SAC: gradient updates per transition (default 1)"
    )
    train.add_argument(
        "--learning-starts", type=int, help="SAC: random-action transitions first (default 1000)"
    )
    train.add_argument(
        "--halt-unknown",
        action="store_true",
        help="--sim: steps that leave the model's data end as terminated, not truncated (MOReL's pessimistic "
        "HALT; for envs whose rewards are > 0)",
    )
    train.add_argument(
        "--eval-episodes",
        type=int,
        default=10,
        help="episodes of the final evaluation, 0 for none (default: %(default)s)",
    )
    train.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a progress bar (default: on)",
    )

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a saved agent (or a planner saved by `simgan loop --algo mpc`)",
        formatter_class=parser.formatter_class,
    )
    evaluate.add_argument(
        "--agent",
        required=True,
        help="agent directory written by `simgan agent train`, or a planner's (mpc.json) by `simgan loop --algo mpc`",
    )
    _add_env_args(evaluate)
    evaluate.add_argument(
        "--episodes", type=int, default=10, help="episodes to average (default: %(default)s)"
    )
    evaluate.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of the policy's mode"
    )
    evaluate.add_argument("--json", dest="json_out", help="also write the result as JSON to this file")
    add_shard_arguments(evaluate, "episodes")


def make_training_env(args: argparse.Namespace, device: Any) -> Any:
    """A single env (num_envs 1, real env) or a VectorEnv (real: SyncVectorEnv; learned: SimVectorEnv)."""
    import gymnasium as gym

    if args.num_envs < 1:
        raise AgentCLIError(f"--num-envs: expected >= 1, got {args.num_envs}")
    if args.sim is not None:
        import simgan  # noqa: F401  (registers simgan/Sim-v0)

        if SIM_ENV_ID not in gym.registry:
            raise AgentCLIError(f"--sim needs the learned env {SIM_ENV_ID!r}, which is not registered")
        if not Path(args.sim).is_dir():
            raise AgentCLIError(f"--sim: expected a model directory, got {args.sim!r} (no such directory)")
        # eval's namespace has no --halt-unknown: its returns are the same either way
        kwargs = {
            "model": args.sim,
            "device": str(device),
            "halt_unknown": getattr(args, "halt_unknown", False),
            **known_kwargs(args),
        }
        if args.num_envs == 1:
            return gym.make(SIM_ENV_ID, **kwargs)
        return gym.make_vec(
            SIM_ENV_ID, num_envs=args.num_envs, vectorization_mode="vector_entry_point", **kwargs
        )
    from envs import make_env

    if args.num_envs == 1:
        return make_env(args.env)
    return gym.vector.SyncVectorEnv([lambda: make_env(args.env) for _ in range(args.num_envs)])


def run(args: argparse.Namespace) -> int:
    return _train(args) if args.agent_command == "train" else _evaluate(args)


def _train(args: argparse.Namespace) -> int:
    import torch

    from agents import PPOConfig, SACConfig, evaluate_policy, train_ppo, train_sac
    from simgan.device import resolve_device

    if args.steps < 1:
        raise AgentCLIError(f"--steps: expected >= 1, got {args.steps}")
    if args.halt_unknown and args.sim is None:
        raise AgentCLIError(f"--halt-unknown: expected --sim (a learned env), got --env {args.env}")
    check_known_args(args)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(
            1
        )  # the agents' small MLPs run fastest single-threaded (and leave cores to envs)
    torch.manual_seed(args.seed)
    env = make_training_env(args, device)
    source = args.env or f"sim:{Path(args.sim).name}"
    run_name = f"{source.replace('/', '-').replace(':', '-')}__{args.algo}__{args.seed}__{int(time.time())}"
    log_dir = args.log_dir or str(Path(args.out) / "tensorboard" / run_name)
    if args.algo == "sac":
        config = SACConfig(total_steps=args.steps, seed=args.seed)
        if args.updates_per_step is not None:
            config.updates_per_step = args.updates_per_step
        if args.learning_starts is not None:
            config.learning_starts = args.learning_starts
        result = train_sac(env, config, device=device, log_dir=log_dir, progress=args.progress)
    else:
        config = PPOConfig(total_steps=args.steps, seed=args.seed)
        result = train_ppo(env, config, device=device, log_dir=log_dir, progress=args.progress)
    agent = result.agent
    metadata: dict[str, Any] = {
        "env": args.env,
        "sim": args.sim,
        "num_envs": args.num_envs,
        "steps": args.steps,
        "halt_unknown": args.halt_unknown,
        **known_kwargs(args),
    }
    if args.eval_episodes > 0:
        evaluation = evaluate_policy(agent, env, episodes=args.eval_episodes, seed=args.seed + 10_000)
        metadata["eval"] = {"mean_return": evaluation.mean_return, "std_return": evaluation.std_return}
        print(f"eval on {source}: {evaluation}")
    agent.save(args.out, metadata=metadata)
    env.close()
    print(f"saved {args.algo} agent to {args.out} (TensorBoard: {log_dir})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    check_shard_arguments(args)
    check_known_args(args)
    if args.shards:
        result = _evaluate_sharded(args)
    else:
        result = evaluate_saved_agent(
            args.agent,
            args,
            device=args.device,
            episodes=args.episodes,
            seed=args.seed,
            deterministic=not args.stochastic,
        )
    source = args.env or f"sim:{args.sim}{known_label(args)}"
    print(f"{args.agent} on {source}: {result}")
    if args.json_out:
        from simgan.fsutil import atomic_write_json

        atomic_write_json(
            args.json_out,
            {
                "agent": args.agent,
                "env": args.env,
                "sim": args.sim,
                **known_kwargs(args),
                "mean_return": result.mean_return,
                "std_return": result.std_return,
                "returns": result.returns,
                "lengths": result.lengths,
                "endings": result.endings,
            },
        )
    return 0


def evaluate_saved_agent(
    agent_dir: str,
    source: argparse.Namespace,
    *,
    device: str,
    episodes: int,
    seed: int,
    deterministic: bool,
    shard: int = 0,
) -> Any:
    """Load the agent in ``agent_dir`` and evaluate it in the env that ``source`` (``env``/``sim``/``num_envs``)
    names; returns ``agents.EvalResult``. The one evaluation of ``agent eval``, in this process or in shard
    ``shard`` (> 0: the agent's action sampling reseeded, :func:`simgan.cli.shards.reseed_for_shard`)."""
    from agents import evaluate_policy
    from simgan.cli.policies import load_policy
    from simgan.device import resolve_device

    resolved = resolve_device(device)
    env = make_training_env(source, resolved)
    try:
        if hasattr(env, "num_envs"):
            spaces = env.single_observation_space, env.single_action_space
        else:
            spaces = env.observation_space, env.action_space
        agent = load_policy(agent_dir, spaces[0], spaces[1], device=resolved)
        reseed_for_shard(agent, shard)
        return evaluate_policy(agent, env, episodes=episodes, seed=seed, deterministic=deterministic)
    finally:
        env.close()


def _evaluate_shard(
    agent_dir: str,
    env: str | None,
    sim: str | None,
    num_envs: int,
    device: str,
    episodes: int,
    seed: int,
    deterministic: bool,
    shard: int,
    known_reward: bool = False,
    known_termination: bool = False,
) -> Any:
    """One ``agent eval --shards`` shard, run inside its Ray actor: env and agent are built here from paths."""
    source = argparse.Namespace(
        env=env,
        sim=sim,
        num_envs=num_envs,
        known_reward=known_reward,
        known_termination=known_termination,
    )
    return evaluate_saved_agent(
        agent_dir,
        source,
        device=device,
        episodes=episodes,
        seed=seed,
        deterministic=deterministic,
        shard=shard,
    )


def _evaluate_sharded(args: argparse.Namespace) -> Any:
    """``agent eval --shards S``: contiguous blocks of episodes over S Ray actors (see the module docstring)."""
    import numpy as np

    from agents import combine_results
    from simgan.shards import run_shards, split_evenly

    # the actors would find these too, but only after the cluster has started
    if args.episodes < args.shards:
        raise AgentCLIError(
            f"--episodes: expected at least one episode per shard ({args.shards}), got {args.episodes}"
        )
    if args.num_envs < 1:
        raise AgentCLIError(f"--num-envs: expected >= 1, got {args.num_envs}")
    if args.sim is not None and not Path(args.sim).is_dir():
        raise AgentCLIError(f"--sim: expected a model directory, got {args.sim!r} (no such directory)")
    if not Path(args.agent).is_dir():
        raise AgentCLIError(f"--agent: expected an agent directory, got {args.agent!r} (no such directory)")
    device, gpus = shard_device(args.device)
    counts = split_evenly(args.episodes, args.shards)
    firsts = np.cumsum([0, *counts[:-1]]).tolist()  # index of each shard's first episode
    shard_kwargs = [
        {
            "agent_dir": str(Path(args.agent).resolve()),  # absolute: actors may start elsewhere
            "env": args.env,
            "sim": None if args.sim is None else str(Path(args.sim).resolve()),
            "num_envs": args.num_envs,
            "device": device,
            "episodes": count,
            "seed": args.seed + first,
            "deterministic": not args.stochastic,
            "shard": k,
            "known_reward": args.known_reward,
            "known_termination": args.known_termination,
        }
        for k, (count, first) in enumerate(zip(counts, firsts))
    ]
    parts = run_shards(_evaluate_shard, shard_kwargs, address=args.address, gpus_per_shard=gpus)
    return combine_results(parts)
