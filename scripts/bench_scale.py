"""Scaling on Ray in one run: collection throughput with 1, 2, 4 workers; training throughput with 1, 2 Ray Train
workers (plus the in-process loop for reference); fidelity of each trained model on the same validation rows.

    python scripts/bench_scale.py --collect-steps 100000 --train-steps 300 --repeats 3

Collection: ``simgan.collect`` of a random policy on one embedded Ray cluster started once (its start-up is not
timed; the workers' actor start-up is), transitions written per second of wall time. Training:
``simgan.distributed.train_distributed`` on a dataset of 8 shards; throughput is ``steps x batch_size x workers /
seconds`` of the workers' ``train`` call (generator-step conditions; data loading, the final evaluation and
checkpoint included; the start-up of Ray and of Ray Train's worker group is not, it shows in the wall time).
Each worker uses one CPU (Ray sets one intra-op thread per worker); so does the in-process row. Settings are
interleaved over ``--repeats`` and medians reported; ratios are against the 1-worker rows of the same run.
Writes ``results/bench_scale.json``, a plot beside it (same name, .png: transitions/s per setting with the range
over repeats) and prints a markdown table; ``--plot-from JSON`` redraws the plot of an earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import simgan
from simgan.checkpoint import load_model_files
from simgan.collection import connect_ray
from simgan.distributed import train_distributed
from simgan.fsutil import atomic_write_figure, atomic_write_json
from simgan.training import TrainConfig, train

FIDELITY = ("best_energy_score", "next_obs_mse_mean", "next_obs_mse_sample", "mmd2")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--collect-steps", type=int, default=20000, help="transitions per collection run")
    p.add_argument("--collect-workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--train-steps", type=int, default=300, help="generator steps per training run")
    p.add_argument("--train-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=256, help="per worker")
    p.add_argument("--repeats", type=int, default=1, help="runs per setting (medians reported)")
    p.add_argument("--out", default="results/bench_scale.json")
    p.add_argument(
        "--plot-from",
        default=None,
        metavar="JSON",
        help="measure nothing: draw the plot of an earlier run's JSON to --out with the suffix .png",
    )
    return p.parse_args()


def _summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Median (and range) of (transitions/s, seconds) over repeats."""
    rates = [rate for rate, _ in samples]
    return {
        "transitions_per_second": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "seconds": statistics.median(seconds for _, seconds in samples),
        "samples": rates,
    }


def bench_collect(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    samples: dict[int, list[tuple[float, float]]] = {w: [] for w in args.collect_workers}
    for repeat in range(args.repeats):  # interleaved, so load drift hits every setting alike
        for workers in args.collect_workers:
            out = root / f"collect-{workers}-{repeat}"
            started = time.perf_counter()
            simgan.collect(
                args.env, steps=args.collect_steps, out=out, workers=workers, seed=0, progress=False
            )
            seconds = time.perf_counter() - started
            shutil.rmtree(out)
            samples[workers].append((args.collect_steps / seconds, seconds))
            print(f"collect  workers={workers}: {args.collect_steps / seconds:.0f} transitions/s", flush=True)
    return [{"workers": w, **_summary(samples[w])} for w in args.collect_workers]


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.train_steps,
        eval_every=args.train_steps,  # one evaluation, at the end
        batch_size=args.batch_size,
        figures=False,
        device="cpu",
    )


def bench_train(args: argparse.Namespace, data: Path, root: Path) -> list[dict[str, Any]]:
    config = train_config(args)
    settings = [("in-process", 1)] + [("ray-train", w) for w in args.train_workers]
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in settings}
    fidelity: dict[tuple[str, int], dict[str, float]] = {}
    dataset = simgan.load_dataset(data)
    for repeat in range(args.repeats):
        for mode, workers in settings:
            out = root / f"train-{mode}-{workers}-{repeat}"
            started = time.perf_counter()
            if mode == "in-process":
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # like a Ray worker with one CPU
                train(dataset, out, config, progress=False)
                torch.set_num_threads(threads)
                rate = args.train_steps * args.batch_size / (time.perf_counter() - started)
            else:
                rate = train_distributed(data, out, config, num_workers=workers)["transitions_per_second"]
            wall = time.perf_counter() - started
            metrics = load_model_files(out).metrics
            fidelity.setdefault((mode, workers), {name: metrics[name] for name in FIDELITY})
            samples[(mode, workers)].append((rate, wall))
            print(
                f"train    {mode} workers={workers}: {rate:.0f} transitions/s ({wall:.0f} s wall)", flush=True
            )
    return [
        {"mode": mode, "workers": workers, **_summary(samples[(mode, workers)]), **fidelity[(mode, workers)]}
        for mode, workers in settings
    ]


def markdown(collect_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]) -> str:
    base_c = collect_rows[0]["transitions_per_second"]
    lines = [
        "| stage | workers | transitions/s (median) | range | vs 1 worker | wall s | best energy score "
        "| next-obs MSE (mean head) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in collect_rows:
        lines.append(
            f"| collect | {r['workers']} | {r['transitions_per_second']:.0f} | {r['min']:.0f}-{r['max']:.0f} | "
            f"{r['transitions_per_second'] / base_c:.2f}x | {r['seconds']:.1f} | | |"
        )
    base_t = next(r for r in train_rows if r["mode"] == "ray-train")["transitions_per_second"]
    for r in train_rows:
        lines.append(
            f"| train ({r['mode']}) | {r['workers']} | {r['transitions_per_second']:.0f} | "
            f"{r['min']:.0f}-{r['max']:.0f} | {r['transitions_per_second'] / base_t:.2f}x | {r['seconds']:.1f} | "
            f"{r['best_energy_score']:.4f} | {r['next_obs_mse_mean']:.2e} |"
        )
    return "\n".join(lines)


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Collection and training transitions/s per setting (median, with the range over repeats as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        ("collection (simgan.collect)", result["collect"], lambda r: f"{r['workers']} worker(s)"),
        ("GAN training", result["train"], lambda r: f"{r['mode']}\n{r['workers']} worker(s)"),
    )
    for ax, (title, rows, label) in zip(axes, panels):
        rates = [r["transitions_per_second"] for r in rows]
        errors = [
            [rate - r["min"] for rate, r in zip(rates, rows)],
            [r["max"] - rate for rate, r in zip(rates, rows)],
        ]
        ax.bar([label(r) for r in rows], rates, yerr=errors, capsize=4, color="C0")
        ax.set_ylabel("transitions / s (median; bars: range over repeats)")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"scaling on Ray, {result['machine']['cpus']} CPUs", fontsize=10)
    fig.tight_layout()
    atomic_write_figure(fig, path)


def main() -> None:
    args = parse_args()
    if args.plot_from is not None:
        figure = Path(args.out).with_suffix(".png")
        write_plot(json.loads(Path(args.plot_from).read_text()), figure)
        print(f"wrote {figure}")
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        import ray

        connect_ray(None, num_cpus=max(os.cpu_count() or 1, *args.collect_workers))
        collect_rows = bench_collect(args, root)
        data = root / "data"
        # 8 shards (2 workers x 4 chunks), so every training worker gets a share
        simgan.collect(
            args.env,
            steps=args.collect_steps,
            out=data,
            workers=2,
            seed=1,
            chunk_steps=args.collect_steps // 8,
            progress=False,
        )
        ray.shutdown()  # train_distributed starts its own cluster, sized for its workers
        train_rows = bench_train(args, data, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "command": "python scripts/bench_scale.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "plot_from"
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_average_1m_at_end": os.getloadavg()[0],
        "train_config": train_config(args).to_json(),
        "collect": collect_rows,
        "train": train_rows,
    }
    table = markdown(collect_rows, train_rows)
    result["table"] = table
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    write_plot(result, Path(args.out).with_suffix(".png"))
    print(table)
    print(f"written to {args.out} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()
