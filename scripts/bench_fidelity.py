"""GAN vs Gaussian ensemble on the same data and seeds: fidelity metrics, issue targets, training wall time.

    python scripts/bench_fidelity.py --seeds 3 --data-steps 20000 --gan-steps 4000 --ensemble-steps 4000
    python scripts/bench_fidelity.py --seeds 2 --first-seed 3 --append   # seeds 3 and 4 added to OUT's results

For every env: one dataset (collection seed 0, reused from ``OUT/data`` when present), then for each seed
0..N-1 a GAN (``simgan.train``) and an ensemble (``simgan.train_ensemble``) trained on it and scored with
:func:`simgan.metrics.evaluate_model` on the validation episodes. Writes ``OUT/results.json`` (every number),
``OUT/table.md`` (means over seeds, ratios GAN / ensemble, pass/fail against the issue's targets) and, per
multimodal env, ``OUT/samples_<env>.png``: both models' samples at one fixed (s, a) over the true next-state
distribution. Targets (ratio = GAN / ensemble of the seed means):

* multimodal envs: one-step MMD^2 and sliced W1 ratio <= 0.5, measured *conditionally* (``cond_mmd2``,
  ``cond_sliced_w1``: many samples at fixed (s, a) from the model and from the env). The unconditional one-step
  ``mmd2`` / ``sliced_w1`` over validation transitions are reported beside them; with a median-heuristic
  bandwidth over whole transitions they barely see mode structure (both models score near 0), so they cannot
  decide this target;
* deterministic envs: ``mean_error`` and ``rollout_mse/k10`` ratio <= 1.2;
* Pendulum-v1: the GAN reaches its best validation score within 180 s (``time_to_best_s``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simgan.config import ACTIVATION_NAMES

MULTIMODAL = ("simgan/KickedPendulum-v0", "simgan/ForkingPointMass-v0")
DEFAULT_ENVS = ("Pendulum-v1", "CartPole-v1", "HalfCheetah-v5", *MULTIMODAL)
# (metric, limit on GAN / ensemble) per env kind; lower metric = better for all of them
TARGETS = {
    "multimodal": (("cond_mmd2", 0.5), ("cond_sliced_w1", 0.5)),
    "deterministic": (("mean_error", 1.2), ("rollout_mse/k10", 1.2)),
}
INFO_COLUMNS = ("mmd2", "sliced_w1", "mean_error", "rollout_mse/k10", "rollout_mse/k25", "termination_f1")
PENDULUM_TIME_LIMIT_S = 180.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="env ids to benchmark")
    p.add_argument("--seeds", type=int, default=3, help="how many training seeds per model")
    p.add_argument("--first-seed", type=int, default=0, help="train seeds FIRST..FIRST+N-1")
    p.add_argument(
        "--ensemble-from",
        default=None,
        help="reuse the ensemble's per-seed results of an earlier results.json made with the same data and "
        "ensemble settings (when only the GAN changed); seeds it lacks, and the figures' seed, are trained",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add these seeds to OUT/results.json (same data and training settings) and re-summarise",
    )
    p.add_argument(
        "--data-steps", type=int, default=20000, help="transitions collected per env (random policy)"
    )
    p.add_argument("--gan-steps", type=int, default=4000, help="GAN generator steps")
    p.add_argument(
        "--gan-mean-hidden",
        type=int,
        nargs="+",
        default=None,
        help="GAN mean-head hidden sizes, for architecture studies (default: TrainConfig's)",
    )
    p.add_argument(
        "--gan-activation",
        choices=list(ACTIVATION_NAMES),
        default=None,
        help="GAN hidden-layer activation, for speed / fidelity studies (default: TrainConfig's)",
    )
    p.add_argument(
        "--gan-lr-mean",
        type=float,
        default=None,
        help="GAN mean-head learning rate, for training studies (default: TrainConfig's)",
    )
    p.add_argument(
        "--ensemble-steps", type=int, default=4000, help="ensemble optimiser steps (early stopping on)"
    )
    p.add_argument(
        "--eval-samples", type=int, default=2000, help="validation transitions for one-step metrics"
    )
    p.add_argument(
        "--cond-points",
        type=int,
        default=128,
        help="held-out (s, a) points of the conditional metrics, per seed (results made before this option: 8)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="results/bench_fidelity", help="output directory")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--plot-from",
        nargs="+",
        default=None,
        metavar="JSON",
        help="train nothing: draw OUT/checks.png from these results files (e.g. results/bench_fidelity/*.json)",
    )
    p.add_argument(
        "--table-only", action="store_true", help="rebuild table.md from OUT/results.json, train nothing"
    )
    return p.parse_args()


def env_kind(env_id: str) -> str:
    return "multimodal" if env_id in MULTIMODAL else "deterministic"


def slug(env_id: str) -> str:
    return env_id.replace("/", "_")


def load_or_collect(env_id: str, steps: int, root: Path):
    import simgan
    from simgan.data import load_dataset

    path = root / "data" / slug(env_id)
    if (path / "manifest.json").is_file():
        dataset = load_dataset(path)
        if len(dataset) == steps:
            return dataset
    return simgan.collect(env_id, steps=steps, workers=0, out=path, seed=0, overwrite=True, progress=False)


def train_pair(
    dataset, env_id: str, seed: int, args: argparse.Namespace, root: Path, ensemble: dict[str, Any] | None
) -> dict[str, Any]:
    """Train both models with one seed (the ensemble only when ``ensemble``, its stored result, is None);
    returns {model: {"metrics", "train_s", "model"}}."""
    from simgan.ensemble import EnsembleConfig
    from simgan.ensemble_training import train_ensemble
    from simgan.metrics import evaluate_model
    from simgan.train_config import TrainConfig
    from simgan.training import train

    runs: dict[str, Any] = {}
    overrides = {} if args.gan_mean_hidden is None else {"mean_hidden": tuple(args.gan_mean_hidden)}
    if args.gan_lr_mean is not None:
        overrides["lr_mean"] = args.gan_lr_mean
    if args.gan_activation is not None:
        overrides["activation"] = args.gan_activation
    gan_dir = root / "runs" / f"{slug(env_id)}__gan__{seed}"
    start = time.perf_counter()
    gan = train(
        dataset,
        gan_dir,
        TrainConfig(steps=args.gan_steps, seed=seed, device=args.device, figures=False, **overrides),
        overwrite=True,
        progress=False,
    )
    runs["gan"] = {"train_s": time.perf_counter() - start, "model": gan}
    gan_meta = json.loads((gan_dir / "model.json").read_text())["metrics"]
    runs["gan"]["time_to_best_s"] = gan_meta.get("time_to_best_s")

    if ensemble is None:
        ens_dir = root / "runs" / f"{slug(env_id)}__ensemble__{seed}"
        shutil.rmtree(ens_dir, ignore_errors=True)
        start = time.perf_counter()
        config = EnsembleConfig(steps=args.ensemble_steps, seed=seed, device=args.device, progress=False)
        model = train_ensemble(dataset, ens_dir, config)
        runs["ensemble"] = {"train_s": time.perf_counter() - start, "model": model}
    for run in runs.values():
        run["metrics"] = evaluate_model(
            run["model"],
            dataset,
            max_samples=args.eval_samples,
            conditional_points=args.cond_points,
            seed=seed,
        )
    if ensemble is not None:
        runs["ensemble"] = {**ensemble, "reused_from": args.ensemble_from}
    return runs


def stored_ensembles(args: argparse.Namespace) -> dict[str, dict[int, dict[str, Any]]]:
    """{env: {seed: the ensemble's stored result}} from ``--ensemble-from`` (empty without it)."""
    if args.ensemble_from is None:
        return {}
    stored = json.loads(Path(args.ensemble_from).read_text())
    refuse_other_settings(
        f"--ensemble-from: {args.ensemble_from}",
        stored["args"],
        args,
        ("data_steps", "ensemble_steps", "eval_samples", "cond_points"),
    )
    return {
        env: dict(
            zip(entry.get("seeds", range(len(entry["per_seed"]))), (s["ensemble"] for s in entry["per_seed"]))
        )
        for env, entry in stored["envs"].items()
    }


def seed_mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def ratio(gan: float, ensemble: float) -> float:
    return gan / ensemble if ensemble > 0 and math.isfinite(gan) else math.nan


def summarize(env_id: str, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means per model, GAN / ensemble ratios, and pass/fail against the issue's targets."""
    means = {
        model: {
            k: seed_mean([s[model]["metrics"][k] for s in per_seed]) for k in per_seed[0][model]["metrics"]
        }
        for model in ("gan", "ensemble")
    }
    for model in means:
        means[model]["train_s"] = seed_mean([s[model]["train_s"] for s in per_seed])
    checks = {}
    for metric, limit in TARGETS[env_kind(env_id)]:
        r = ratio(means["gan"][metric], means["ensemble"][metric])
        checks[metric] = {"ratio": r, "limit": limit, "pass": bool(r <= limit)}
    if env_id == "Pendulum-v1":
        t = seed_mean([s["gan"]["time_to_best_s"] for s in per_seed])
        checks["gan_time_to_best_s"] = {
            "value": t,
            "limit": PENDULUM_TIME_LIMIT_S,
            "pass": bool(t <= PENDULUM_TIME_LIMIT_S),
        }
    return {"means": means, "checks": checks}


def format_table(summaries: dict[str, dict[str, Any]], seeds: int) -> str:
    lines = [
        "| env | target (GAN / ensemble) | ratio | pass | GAN train s | ensemble train s | "
        + " | ".join(f"{c} GAN / ens" for c in INFO_COLUMNS)
        + " |",
        "|" + " --- |" * (6 + len(INFO_COLUMNS)),
    ]
    for env_id, summary in summaries.items():
        means = summary["means"]
        info = " | ".join(
            f"{means['gan'].get(c, math.nan):.3g} / {means['ensemble'].get(c, math.nan):.3g}"
            for c in INFO_COLUMNS
        )
        for name, check in summary["checks"].items():
            shown = check.get("ratio", check.get("value"))
            target = f"{name} <= {check['limit']:g}" + (" s" if "value" in check else "")
            lines.append(
                f"| {env_id} | {target} | {shown:.3g} | {'yes' if check['pass'] else '**no**'} | "
                f"{means['gan']['train_s']:.0f} | {means['ensemble']['train_s']:.0f} | {info} |"
            )
    lines.append(
        f"\nMeans over {seeds} seed(s); ratios are GAN mean / ensemble mean (lower is better for GAN)."
    )
    return "\n".join(lines)


def sample_figure(env_id: str, dataset, models: dict[str, Any], path: Path) -> None:
    """Samples of both models at one fixed (s, a), over the true next-state distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from envs import make_env

    env = make_env(env_id, dataset.env_kwargs).unwrapped
    obs = dataset.validation.obs[0]
    action = dataset.validation.action[0]
    n = 1000
    samples = {"true": env.sample_next_states(obs, action, n, np.random.default_rng(0))}
    for name, model in models.items():
        next_obs, _, _ = model.sample(
            torch.as_tensor(np.repeat(obs[None], n, 0)),
            torch.as_tensor(np.repeat(np.asarray(action)[None], n, 0)),
            generator=torch.Generator(device=model.device).manual_seed(0),
        )
        samples[name] = next_obs.cpu().numpy()
    if env_id == "simgan/KickedPendulum-v0":  # (angle, angular velocity) of [cos, sin, thdot]
        to_xy = lambda s: np.stack([np.arctan2(s[:, 1], s[:, 0]), s[:, 2]], 1)  # noqa: E731
        labels = ("next angle (rad)", "next angular velocity")
    else:
        to_xy = lambda s: s[:, :2]  # noqa: E731
        labels = ("next x", "next y")
    fig, ax = plt.subplots(figsize=(6, 5))
    # models first, the true samples last on top (the kicked pendulum's are two exact points)
    styles = {
        "gan": ("tab:blue", 6, "o", "GAN"),
        "ensemble": ("tab:orange", 6, "o", "ensemble"),
        "true": ("black", 40, "x", "true env"),
    }
    for name in ("gan", "ensemble", "true"):
        color, size, marker, label = styles[name]
        xy = to_xy(samples[name])
        alpha = 0.8 if name == "true" else 0.5
        ax.scatter(
            xy[:, 0], xy[:, 1], s=size, c=color, marker=marker, alpha=alpha, label=label, linewidths=0.8
        )
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(f"{env_id}\n{n} next-state samples at one (s, a)", fontsize=10)
    ax.legend(markerscale=2)
    fig.tight_layout()
    from simgan.fsutil import atomic_write_figure

    atomic_write_figure(fig, path, dpi=120)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "model"}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def checks_figure(envs: dict[str, dict[str, Any]], path: Path) -> None:
    """Every target's GAN / ensemble ratio (log scale) against its limit, one bar per env and metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simgan.fsutil import atomic_write_figure

    rows = [
        (f"{env.removeprefix('simgan/')}: {metric}", check)
        for env, entry in envs.items()
        for metric, check in entry["checks"].items()
        if "ratio" in check
    ]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y, [c["ratio"] for _, c in rows], color=["C2" if c["pass"] else "C3" for _, c in rows])
    ax.scatter([c["limit"] for _, c in rows], y, marker="|", s=300, color="black", label="target: at most")
    ax.set_yticks(y, [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("GAN / Gaussian ensemble (lower: the GAN is better; green: target met)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write_figure(fig, path)


def main() -> None:
    from simgan.fsutil import atomic_write_bytes, atomic_write_json

    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    if args.plot_from:
        envs = {}
        for stored in args.plot_from:
            envs.update(json.loads(Path(stored).read_text())["envs"])
        checks_figure(envs, root / "checks.png")
        print(f"wrote {root / 'checks.png'}")
        return
    if args.table_only:  # e.g. after changing the targets: re-summarise the stored per-seed metrics
        stored = json.loads((root / "results.json").read_text())
        summaries = {env: summarize(env, entry["per_seed"]) for env, entry in stored["envs"].items()}
        for env, entry in stored["envs"].items():
            entry.update(_jsonable(summaries[env]))
        atomic_write_json(root / "results.json", stored)
        table = format_table(summaries, min(len(entry["per_seed"]) for entry in stored["envs"].values()))
        atomic_write_bytes(root / "table.md", (table + "\n").encode())
        checks_figure(stored["envs"], root / "checks.png")
        print(table)
        return
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.append:
        results = stored_results(root, args, seeds)
        results["args"]["seeds"] = "see envs.<env>.seeds"
    else:
        results = {"args": vars(args), "envs": {}}
    reusable = stored_ensembles(args)
    summaries = {}
    for env_id in args.envs:
        dataset = load_or_collect(env_id, args.data_steps, root)
        earlier = results["envs"].get(env_id, {"per_seed": [], "seeds": []})
        per_seed = []
        for seed in seeds:
            figure_due = seed == seeds[0] and not earlier["seeds"] and env_id in MULTIMODAL
            stored = None if figure_due else reusable.get(env_id, {}).get(seed)
            runs = train_pair(dataset, env_id, seed, args, root, stored)
            per_seed.append(runs)
            print(
                f"{env_id} seed {seed}: "
                + "  ".join(
                    f"{m}: train {r['train_s']:.0f}s mean_err {r['metrics']['mean_error']:.3g} "
                    f"mmd2 {r['metrics']['mmd2']:.3g} swd {r['metrics']['sliced_w1']:.3g}"
                    for m, r in runs.items()
                ),
                flush=True,
            )
            if figure_due:
                figure = root / f"samples_{slug(env_id)}.png"
                sample_figure(env_id, dataset, {m: r["model"] for m, r in runs.items()}, figure)
        all_seeds = [*earlier["per_seed"], *_jsonable(per_seed)]
        summaries[env_id] = summarize(env_id, all_seeds)
        results["envs"][env_id] = {
            "per_seed": all_seeds,
            "seeds": [*earlier["seeds"], *seeds],
            **_jsonable(summaries[env_id]),
        }
        atomic_write_json(root / "results.json", results)  # after every env: partial results survive
    everything = {env: summarize(env, entry["per_seed"]) for env, entry in results["envs"].items()}
    table = format_table(everything, min(len(entry["per_seed"]) for entry in results["envs"].values()))
    atomic_write_bytes(root / "table.md", (table + "\n").encode())
    checks_figure(results["envs"], root / "checks.png")
    print(table)


LEGACY_SETTINGS = {"cond_points": 8}  # what results made before a setting existed used


def stored_setting(stored_args: dict[str, Any], key: str) -> Any:
    """A stored run's setting, or what runs made before the setting existed used."""
    return stored_args.get(key, LEGACY_SETTINGS.get(key))


def refuse_other_settings(
    source: str, stored_args: dict[str, Any], args: argparse.Namespace, keys: tuple[str, ...], why: str = ""
) -> None:
    """SystemExit naming the first of ``keys`` whose stored value (``source``'s) differs from this run's."""
    for key in keys:
        made_with = stored_setting(stored_args, key)
        if made_with != getattr(args, key):
            raise SystemExit(
                f"{source} was made with {key}={made_with!r}, this run has {getattr(args, key)!r}{why}"
            )


# Settings that must match for seeds of two runs to be summarised together.
SAME_RUN_SETTINGS = (
    "data_steps",
    "gan_steps",
    "ensemble_steps",
    "eval_samples",
    "cond_points",
    "gan_mean_hidden",
    "gan_lr_mean",
    "gan_activation",
)


def stored_results(root: Path, args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    """OUT/results.json to append ``seeds`` to, after checking it was made with the same settings."""
    path = root / "results.json"
    if not path.is_file():
        raise SystemExit(f"--append: expected an earlier run's {path}, found none")
    stored = json.loads(path.read_text())
    refuse_other_settings(
        f"--append: {path}",
        stored["args"],
        args,
        SAME_RUN_SETTINGS,
        "; seeds of different settings cannot be averaged",
    )
    for env_id in args.envs:
        entry = stored["envs"].get(env_id)
        if entry is None:
            continue
        entry.setdefault("seeds", list(range(len(entry["per_seed"]))))  # runs from before seeds were recorded
        if repeated := sorted(set(entry["seeds"]) & set(seeds)):
            raise SystemExit(f"--append: {env_id} already has seed(s) {repeated} in {path}")
    return stored


if __name__ == "__main__":
    main()
