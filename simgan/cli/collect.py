"""``simgan collect``: collect rollouts of a gymnasium env (on Ray workers) into a verified dataset.

    simgan collect --env Pendulum-v1 --steps 100000 --workers 4 --out data/pendulum
    simgan collect --env Pendulum-v1 --steps 10000 --policy runs/sac-agent --action-noise 0.1 --out data/sac

``--policy PATH`` takes an agent directory written by ``simgan agent train`` (or by ``simgan loop``). The CLI is
allowed to import ``agents``; the library's :func:`simgan.collection.collect` only ever sees a plain callable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
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
        help="'random' (uniform over the action space) or PATH: an agent directory written by `simgan agent train` (or a planner, mpc.json, by `simgan loop --algo mpc`)",
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


class SavedAgentPolicy:
    """A saved agent or planner as a picklable ``obs (K x obs_dim) -> actions`` callable for :func:`simgan.collection.collect`.

    The agent is loaded (and its spaces checked) once at construction, so a bad directory fails before anything
    is written; pickling ships only the path and the spaces, and each Ray worker loads its own copy on first use
    (torch generators and modules never cross process boundaries).

    Args:
        path: agent directory (``agent.json`` + safetensors) or planner directory (``mpc.json``,
            :mod:`simgan.cli.policies`).
        observation_space: the env's observation space; must equal the agent's.
        action_space: the env's action space; must equal the agent's.
        deterministic: act with the policy's mode instead of sampling.
    """

    def __init__(
        self, path: str | Path, observation_space: Any, action_space: Any, deterministic: bool = False
    ):
        self.path = str(path)
        self.observation_space, self.action_space = observation_space, action_space
        self.deterministic = deterministic
        self._agent: Any = None
        self._load()

    def _load(self) -> Any:
        from simgan.cli.policies import load_policy

        self._agent = load_policy(self.path, self.observation_space, self.action_space, device="cpu")
        return self._agent

    def __call__(self, obs: Any) -> Any:
        agent = self._agent if self._agent is not None else self._load()
        return agent.act(obs, deterministic=self.deterministic)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_agent": None}

    def __repr__(self) -> str:
        return f"SavedAgentPolicy({self.path!r})"


def resolve_policy(policy: str, env_id: str, env_kwargs: dict[str, Any]) -> Any:
    """``--policy``: ``"random"`` as is, else a :class:`SavedAgentPolicy` for the agent or planner directory.

    Raises:
        ValueError: ``policy`` is neither ``random`` nor an agent directory (or the agent does not fit the env).
    """
    if policy == "random":
        return policy
    if not Path(policy).is_dir():
        raise ValueError(
            f"--policy: expected 'random' or an agent directory (written by `simgan agent train`, or a planner by "
            f"`simgan loop --algo mpc`), got {policy!r} (no such directory)"
        )
    from envs import make_env

    probe = make_env(env_id, env_kwargs)
    try:
        return SavedAgentPolicy(policy, probe.observation_space, probe.action_space)
    finally:
        probe.close()


def run(args: argparse.Namespace) -> int:
    if args.address and args.workers == 0:
        from simgan.cli import CLIError

        raise CLIError(
            "--address: expected --workers >= 1 (Ray workers to run on the cluster), got --workers 0"
        )
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    policy = resolve_policy(args.policy, args.env, env_kwargs)

    from simgan.collection import collect
    from simgan.data import summarize

    dataset = collect(
        args.env,
        steps=args.steps,
        out=args.out,
        workers=args.workers,
        seed=args.seed,
        policy=policy,
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
