"""``simgan evaluate --model RUN [RUN ...] --data DIR``: fidelity metrics of one or more models, side by side."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from simgan.device import DEVICE_CHOICES
from simgan.world_model import PRECISIONS


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", nargs="+", required=True, metavar="RUN", help="model directories to compare"
    )
    parser.add_argument(
        "--data", required=True, metavar="DIR", help="dataset directory (its validation episodes)"
    )
    parser.add_argument("--out", metavar="FILE", help="write the results as JSON here")
    parser.add_argument("--device", default="auto", help=f"one of {DEVICE_CHOICES} or cuda:N")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="share of episodes held out")
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the episode split (as in training)"
    )
    parser.add_argument(
        "--max-samples", type=int, default=2000, help="validation transitions for one-step metrics"
    )
    parser.add_argument(
        "--horizons", type=int, nargs="+", default=[1, 5, 10, 25], help="open-loop rollout lengths"
    )
    parser.add_argument(
        "--conditional-points", type=int, default=128, help="(s, a) points for conditional metrics"
    )
    parser.add_argument("--conditional-samples", type=int, default=500, help="samples per conditional point")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsampling and model noise")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["float32"],
        choices=list(PRECISIONS),
        help="score each model at these precisions, as a learned env with that precision runs it (a column "
        "RUN@bfloat16 for each model): what a faster, lower precision costs in fidelity",
    )


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Metrics as rows, one column per model."""
    names = list(results)
    metrics: list[str] = []
    for values in results.values():
        metrics.extend(k for k in values if k not in metrics)
    width = max(len(m) for m in metrics) + 2
    columns = [max(12, len(Path(n).name) + 2) for n in names]
    lines = ["metric".ljust(width) + "".join(Path(n).name.rjust(c) for n, c in zip(names, columns))]
    for metric in metrics:
        cells = []
        for name, col in zip(names, columns):
            value = results[name].get(metric, math.nan)
            cells.append(f"{value:.4g}".rjust(col))
        lines.append(metric.ljust(width) + "".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from simgan.checkpoint import load_model
    from simgan.data import load_dataset
    from simgan.fsutil import atomic_write_json
    from simgan.metrics import evaluate_model
    from simgan.world_model import at_precision

    dataset = load_dataset(
        args.data, validation_fraction=args.validation_fraction, split_seed=args.split_seed
    )
    results: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    for run_dir in args.model:
        model = load_model(run_dir, device=args.device)
        if model.info.env_id != dataset.env_id:
            raise ValueError(
                f"{run_dir}: model trained on env {model.info.env_id!r}, dataset is {dataset.env_id!r}"
            )
        for precision in dict.fromkeys(args.precision):
            name = run_dir if precision == "float32" else f"{run_dir}@{precision}"
            kinds[name] = (type(model).__name__, precision)
            results[name] = evaluate_model(
                at_precision(model, precision),
                dataset,
                max_samples=args.max_samples,
                horizons=tuple(args.horizons),
                conditional_points=args.conditional_points,
                conditional_samples=args.conditional_samples,
                seed=args.seed,
            )
    print(format_table(results))
    if args.out:
        payload: dict[str, Any] = {
            "data": str(args.data),
            "env_id": dataset.env_id,
            "models": {
                name: {
                    "kind": kinds[name][0],
                    "precision": kinds[name][1],
                    "metrics": {k: _json_number(v) for k, v in values.items()},
                }
                for name, values in results.items()
            },
        }
        atomic_write_json(args.out, payload)
        print(f"wrote {args.out}")
    return 0


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else float(value)
