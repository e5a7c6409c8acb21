"""``simgan collect``: collect rollouts of a gymnasium env (on Ray workers) into a verified dataset."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="gymnasium env id, e.g. Pendulum-v1 or HalfCheetah-v5")
    parser.add_argument("--steps", type=int, required=True, help="total transitions (env steps) to collect")
    parser.add_argument("--out", required=True, help="dataset directory to write (must be empty or absent)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Ray worker actors; 0 runs one worker in this process without Ray",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed; worker i uses seed + i")
    parser.add_argument(
        "--policy",
        default="random",
        help="'random' (uniform over the action space); saved-agent policies by path are not supported yet",
    )
    parser.add_argument(
        "--envs-per-worker",
        type=int,
        default=None,
        help="sub-envs each worker steps in lockstep (default: 8, or 1 for MuJoCo envs)",
    )
    parser.add_argument(
        "--env-kwargs",
        default=None,
        help="JSON object of keyword arguments for gymnasium.make, e.g. '{\"g\": 9.8}'",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=0.0,
        help="probability of replacing a policy action by a uniform random one",
    )
    parser.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        help="Gaussian action noise, std as a fraction of the action range (Box actions), clipped to the bounds",
    )
    parser.add_argument(
        "--chunk-steps",
        type=int,
        default=None,
        help="minimum transitions per shard, except each worker's last (default: from the budget, 2000-50000)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address to connect to (default: $RAY_ADDRESS, else an embedded local cluster)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted collection in --out with the same parameters",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous dataset in --out (only simgan's own files)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def parse_env_kwargs(text: str | None) -> dict[str, Any]:
    """``--env-kwargs`` JSON -> dict. Raises ValueError for invalid JSON or a non-object."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--env-kwargs: expected a JSON object, got invalid JSON {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--env-kwargs: expected a JSON object, got {type(value).__name__} {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    env_kwargs = parse_env_kwargs(args.env_kwargs)

    from simgan.collect import collect
    from simgan.data import summarize

    dataset = collect(
        args.env,
        steps=args.steps,
        out=args.out,
        workers=args.workers,
        seed=args.seed,
        policy=args.policy,
        envs_per_worker=args.envs_per_worker,
        env_kwargs=env_kwargs,
        epsilon=args.epsilon,
        action_noise=args.action_noise,
        address=args.address,
        resume=args.resume,
        overwrite=args.overwrite,
        chunk_steps=args.chunk_steps,
        progress=not args.no_progress,
    )
    print(summarize(dataset))
    return 0
