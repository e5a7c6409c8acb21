"""``simgan simulate``: build the learned env from a model directory and run it (random or saved-agent actions)."""

from __future__ import annotations

import argparse

from simgan.cli.agent import add_known_args, known_kwargs, known_label
from simgan.world_model import PRECISIONS


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory written by `simgan train`")
    parser.add_argument(
        "--num-envs", type=int, default=1024, help="sub-envs stepped together in one batched call"
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="vector steps to run (transitions = steps x num-envs)"
    )
    parser.add_argument("--policy", default="random", help="'random' or a saved agent or planner directory")
    parser.add_argument(
        "--realism-threshold",
        type=float,
        default=None,
        help="truncate transitions whose realism score is below this (0..1)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--precision",
        default="float32",
        choices=list(PRECISIONS),
        help="bfloat16: the model's matmuls in bfloat16 (faster on GPUs and on CPUs with AVX512-BF16 or AMX; "
        "`simgan evaluate --precision float32 bfloat16` shows what it costs in fidelity)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help=(
            "run the step as one torch.compile graph, the model's weights frozen in (compiles on the first step, "
            "seconds; faster after)"
        ),
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of start states, model noise and random actions"
    )
    add_known_args(parser)


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from simgan.errors import SimganError
    from simgan.sim_vector_env import SimVectorEnv

    if args.num_envs <= 0 or args.steps <= 0:
        raise SimganError(
            f"--num-envs and --steps: expected positive integers, got {args.num_envs} and {args.steps}"
        )
    envs = SimVectorEnv(
        args.model,
        num_envs=args.num_envs,
        device=args.device,
        realism_threshold=args.realism_threshold,
        precision=args.precision,
        compile=args.compile,
        seed=args.seed,
        **known_kwargs(args),
    )
    if args.policy == "random":
        envs.action_space.seed(args.seed)
        act = lambda obs: envs.action_space.sample()  # noqa: E731
    else:
        from simgan.cli.forecast import load_policy

        act = load_policy(args.policy, envs.single_observation_space, envs.single_action_space)
    obs, _ = envs.reset(seed=args.seed)
    episode_return = np.zeros(args.num_envs)
    finished: list[float] = []
    start, timed_steps = time.perf_counter(), args.steps
    for step in range(args.steps):
        obs, reward, terminated, truncated, _ = envs.step(act(obs))
        episode_return += reward
        done = terminated | truncated
        finished.extend(episode_return[done].tolist())
        episode_return[done] = 0.0
        if step == 0 and args.compile and args.steps > 1:  # the first step compiled: time the rest
            start, timed_steps = time.perf_counter(), args.steps - 1
    elapsed = time.perf_counter() - start
    stats = envs.get_stats()
    print(
        f"learned env   {args.model}{known_label(args)} on {envs.device} ({args.precision}"
        f"{', compiled' if args.compile else ''}): {args.num_envs} sub-envs x {args.steps} steps"
    )
    untimed = " (after the first step, which compiled)" if timed_steps < args.steps else ""
    print(f"throughput    {args.num_envs * timed_steps / elapsed:,.0f} transitions/s{untimed}")
    if finished:
        print(
            f"episodes      {len(finished):,} finished, return mean {np.mean(finished):.2f} std {np.std(finished):.2f}"
        )
    else:
        print("episodes      none finished (raise --steps to reach the episode limit)")
    print("flags         " + "  ".join(f"{k}={v:,}" for k, v in stats.items()))
    envs.close()
    return 0
