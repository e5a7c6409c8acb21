"""``--shards S [--address ADDR]``, shared by ``simgan forecast`` and ``simgan agent eval``: split the work over
S Ray actors (:func:`simgan.shards.run_shards`); 0 keeps it in this process."""

from __future__ import annotations

import argparse
from typing import Any

from simgan.cli import CLIError


def add_shard_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--shards",
        type=int,
        default=0,
        help=f"split the {what} over this many Ray actors (up to one CPU each; one GPU each with --device cuda); "
        "0: all in this process",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="with --shards: Ray cluster address; unset: $RAY_ADDRESS, else an embedded local cluster",
    )


def check_shard_arguments(args: argparse.Namespace) -> None:
    if args.shards < 0:
        raise CLIError(f"--shards: expected an integer >= 0, got {args.shards}")
    if args.address and args.shards == 0:
        raise CLIError("--address: expected --shards >= 1 (Ray actors to run on the cluster), got --shards 0")


def shard_device(device: str) -> tuple[str, float]:
    """(device inside each shard, GPUs it reserves): ``cuda``/``cuda:N`` -> one GPU per shard, else CPU (Ray
    hides GPUs from an actor that reserves none, so ``auto`` means CPU there)."""
    return ("cuda", 1.0) if device.startswith("cuda") else ("cpu", 0.0)


def reseed_for_shard(agent: Any, shard: int) -> None:
    """Give a freshly loaded agent's action sampling its own stream in shard k > 0 (its seed + k).

    Every shard loads the agent from disk, so without this each would draw the same action noise (in a forecast,
    future j of every shard would take the same first action). Shard 0 keeps the agent as saved, as in-process.
    """
    if shard == 0:
        return
    from agents import SeededPolicy

    if isinstance(agent, SeededPolicy):  # every agent load_agent builds (SAC, PPO, random)
        agent.reseed(agent.seed + shard)
