"""``simgan train --data DIR --out RUN``: train a world model (conditional GAN, or the Gaussian-ensemble baseline)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

# Flags shared with the ensemble's config (passed on by name with --model ensemble).
_ENSEMBLE_SHARED = ("steps", "batch_size", "eval_every", "seed", "device", "forecast_calibration")


def add_parser(parser: argparse.ArgumentParser) -> None:
    from simgan.config import add_dataclass_arguments
    from simgan.train_config import TrainConfig

    parser.add_argument("--data", required=True, help="dataset directory written by `simgan collect`")
    parser.add_argument("--out", required=True, help="run directory: best model, last/ (for --resume), tb/")
    parser.add_argument(
        "--model", choices=("gan", "ensemble"), default="gan", help="which world model to train"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last state")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("data-parallel training on Ray Train (--model gan)")
    ray.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="Ray Train workers (DDP; --batch-size is per worker); 0: train in this process",
    )
    ray.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL (default: CPU, gloo)")
    ray.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local cluster)",
    )
    ray.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="restarts of the worker group after a worker dies, each resuming from the last checkpoint",
    )
    add_dataclass_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from simgan.cli import CLIError
    from simgan.config import dataclass_from_namespace
    from simgan.data import load_dataset
    from simgan.run_directory import check_run_directory
    from simgan.train_config import TrainConfig

    out = Path(args.out)
    if args.model == "ensemble" and args.resume:
        raise CLIError("--resume: expected --model gan (the ensemble trains in one go), got --model ensemble")
    if args.num_workers < 0 or args.max_failures < 0:
        bad = "--num-workers" if args.num_workers < 0 else "--max-failures"
        raise CLIError(f"{bad}: expected an integer >= 0, got {getattr(args, bad[2:].replace('-', '_'))}")
    if args.num_workers == 0 and (args.use_gpu or args.address or args.max_failures):
        raise CLIError("--use-gpu / --address / --max-failures: expected --num-workers >= 1 with them, got 0")
    if args.model == "ensemble" and args.num_workers:
        raise CLIError(f"--num-workers: expected 0 with --model ensemble, got {args.num_workers}")
    # Refuse a bad --out before the (slow) dataset load; nothing is touched then.
    check_run_directory(out, resume=args.resume, overwrite=args.overwrite)
    if args.model == "ensemble":
        return _run_ensemble(args, out)
    config = dataclass_from_namespace(TrainConfig, args)
    if args.resume:
        # The saved run defines everything but the budget and the device.
        from simgan.run_directory import saved_config

        saved = saved_config(out)
        config = replace(saved, steps=config.steps, epochs=config.epochs, device=config.device)
        if config.steps is None and config.epochs is None:
            config = replace(config, steps=saved.steps, epochs=saved.epochs)
    if args.num_workers:
        return _run_distributed(args, out, config)
    dataset = load_dataset(args.data, validation_fraction=config.validation_fraction)
    from simgan.training import train

    train(dataset, out, config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    _print_summary(out)
    return 0


def _run_distributed(args: argparse.Namespace, out: Path, config) -> int:
    from simgan.distributed import train_distributed

    record = train_distributed(
        args.data,
        out,
        config,
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        address=args.address,
        resume=args.resume,
        overwrite=args.overwrite,
        max_failures=args.max_failures,
    )
    nodes = sorted({w["node_id"][:12] for w in record["workers"]})
    print(
        f"trained on {record['world_size']} Ray workers ({record['backend']}) on {len(nodes)} node(s) "
        f"{', '.join(nodes)}: {record['transitions_per_second']:.0f} transitions/s"
    )
    _print_summary(out)
    return 0


def _run_ensemble(args: argparse.Namespace, out: Path) -> int:
    from simgan.data import load_dataset
    from simgan.errors import SimganError

    try:
        from simgan.ensemble import EnsembleConfig
        from simgan.ensemble_training import train_ensemble
    except ImportError as exc:
        raise SimganError(
            f"--model ensemble: the Gaussian-ensemble baseline is not available ({exc})"
        ) from exc
    values = {name: getattr(args, name) for name in _ENSEMBLE_SHARED if getattr(args, name, None) is not None}
    if args.quiet:
        values["progress"] = False
    if args.overwrite and out.is_dir():
        import shutil

        shutil.rmtree(out)
    dataset = load_dataset(args.data, validation_fraction=args.validation_fraction)
    train_ensemble(dataset, out=out, config=EnsembleConfig(**values))
    _print_summary(out)
    return 0


def _print_summary(out: Path) -> None:
    metrics = json.loads((out / "model.json").read_text()).get("metrics", {})
    print(f"model written to {out} (load it with simgan.load_model({str(out)!r}))")
    for key, value in metrics.items():
        if isinstance(value, (int, float, str)) or (isinstance(value, list) and value):
            print(f"  {key:<26} {value:.6g}" if isinstance(value, float) else f"  {key:<26} {value}")
