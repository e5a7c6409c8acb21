"""``simgan forecast``: sample many futures from given states and draw fan charts.

    simgan forecast --model runs/pendulum-gan --state "[1, 0, 0]" --samples 1000 --out runs/forecast
    simgan forecast --model runs/pendulum-gan --state "[1, 0, 0]" --samples 100000 --shards 4 --out runs/forecast

With ``--shards S`` the futures of each start state are split over S Ray actors
(:func:`simgan.shards.sharded_forecast`: shard k runs the same ``forecast`` on its share with seed + k) and
joined into one forecast, written exactly as without.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from simgan.cli.shards import add_shard_arguments, check_shard_arguments, reseed_for_shard, shard_device
from simgan.errors import SimganError


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory written by `simgan train`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--state", help='one start state as a JSON list, e.g. "[1.0, 0.0, 0.2]"')
    source.add_argument(
        "--states-from",
        metavar="DATA",
        help="a dataset directory: start from its validation episodes' first states",
    )
    parser.add_argument("--num-states", type=int, default=4, help="with --states-from: how many start states")
    parser.add_argument("--horizon", type=int, default=50, help="steps per future")
    parser.add_argument("--samples", type=int, default=1000, help="futures per start state")
    parser.add_argument(
        "--policy", default="random", help="'random' (uniform actions) or a saved agent or planner directory"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model noise and the random policy")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--max-memory", type=float, default=512, help="MiB of working memory; bigger requests run in chunks"
    )
    parser.add_argument(
        "--noise-correlation",
        type=float,
        default=None,
        help="0..1: how a future's model noise carries over from step to step (0: independent, 1: one draw per "
        "future); default: the value calibrated on held-out episodes at training time",
    )
    parser.add_argument(
        "--noise-spread",
        type=float,
        default=None,
        help="> 0: a factor on each step's sampled deviation from the model's mean (1: the model's one-step "
        "spread); default: the value calibrated with --noise-correlation's at training time",
    )
    parser.add_argument(
        "--no-realism", action="store_true", help="skip the realism score of each step (faster)"
    )
    parser.add_argument(
        "--out", default=None, help="directory for forecast.npz, forecast.json and fan-chart PNGs"
    )
    add_shard_arguments(parser, "futures of each start state")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from simgan.checkpoint import load_model
    from simgan.forecast_report import fan_chart, summary_table
    from simgan.forecasting import forecast

    check_shard_arguments(args)
    # with --shards the model here only reads the start states; the actors load their own
    model = load_model(args.model, device="cpu" if args.shards else args.device)
    if args.state is not None:
        try:
            states = np.asarray(json.loads(args.state), dtype=np.float32)
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise SimganError(
                f"--state: expected a JSON list of {model.info.obs_dim} numbers, got {args.state!r}"
            ) from exc
    else:
        from simgan.data import load_dataset

        dataset = load_dataset(args.states_from)
        starts = dataset.validation.obs[dataset.validation.step == 0]
        if len(starts) == 0:
            starts = dataset.initial_states()
        states = starts[: max(1, args.num_states)]
    if args.shards:
        result = _sharded_forecast(args, states)
    else:
        policy = None
        if args.policy != "random":
            policy = load_policy(args.policy, model.info.observation_space, model.info.action_space)
        result = forecast(
            model,
            states,
            policy=policy,
            horizon=args.horizon,
            num_samples=args.samples,
            seed=args.seed,
            noise_correlation=args.noise_correlation,
            noise_spread=args.noise_spread,
            compute_realism=not args.no_realism,
            max_memory=int(args.max_memory * 2**20),
            progress=True,
        )
    for name, value, flag, given in (
        (
            "noise correlation over steps",
            result.noise_correlation,
            "--noise-correlation",
            args.noise_correlation,
        ),
        ("noise spread", result.noise_spread, "--noise-spread", args.noise_spread),
    ):
        print(f"{name}: {value:g} ({'calibrated when the model was trained' if given is None else flag})")
    print(summary_table(result))
    if args.out:
        out = Path(args.out)
        result.save(out)
        for b in range(result.shape[0]):
            fan_chart(result, out / f"fan_state{b}.png", state_index=b)
        print(f"wrote {out / 'forecast.npz'}, {out / 'forecast.json'} and {result.shape[0]} fan chart(s)")
    return 0


def _sharded_forecast(args: argparse.Namespace, states):
    from simgan.shards import sharded_forecast

    if args.samples < args.shards:
        raise SimganError(
            f"--samples: expected at least one future per shard ({args.shards}), got {args.samples}"
        )
    policy = None
    if args.policy != "random":
        _check_policy_dir(args.policy)
        policy = functools.partial(_load_shard_policy, str(Path(args.policy).resolve()))
    device, gpus = shard_device(args.device)
    return sharded_forecast(
        args.model,
        states,
        num_shards=args.shards,
        horizon=args.horizon,
        num_samples=args.samples,
        policy=policy,
        seed=args.seed,
        noise_correlation=args.noise_correlation,
        noise_spread=args.noise_spread,
        compute_realism=not args.no_realism,
        max_memory=int(args.max_memory * 2**20),
        device=device,
        address=args.address,
        gpus_per_shard=gpus,
    )


def _load_shard_policy(path: str, model, shard: int):
    """Called inside forecasting shard ``shard``: the saved policy is loaded there, never pickled."""
    return load_policy(path, model.info.observation_space, model.info.action_space, shard=shard)


def _check_policy_dir(path: str) -> None:
    if not Path(path).is_dir():
        raise SimganError(
            f"--policy: expected 'random' or a saved agent or planner directory, got {path!r} (not a directory)"
        )


def load_policy(path: str, observation_space, action_space, shard: int = 0):
    """A saved agent or planner (:func:`simgan.cli.policies.load_policy`) as a batched callable obs -> action,
    spaces checked; in forecasting shard ``shard`` > 0 its action sampling is reseeded with its seed + shard
    (:func:`reseed_for_shard`)."""
    _check_policy_dir(path)
    from simgan.cli.policies import load_policy as load_saved_policy

    agent = load_saved_policy(path, observation_space, action_space, device="cpu")
    reseed_for_shard(agent, shard)
    return lambda obs: agent.act(obs, deterministic=False)
