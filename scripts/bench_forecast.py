"""Forecast quality and speed: calibration of the 10-90 % band, and a PETS-sized planning workload.

    python scripts/bench_forecast.py                       # full run (3 envs, GAN and ensemble)
    python scripts/bench_forecast.py --envs kicked --data-steps 5000 --gan-steps 500 --ensemble-steps 500  # quick
    python scripts/bench_forecast.py --envs pendulum --models RUN1 RUN2 --out /tmp/cov.json  # saved models' coverage

Calibration: for each env, the same data trains a conditional GAN and a Gaussian ensemble. From held-out start
states, a random open-loop plan is forecast with N samples, and the real env is rolled N times from the same state
with the same plan. Coverage = share of real futures (per step and state dimension) inside the forecast's
10-90 % band; a calibrated forecast covers 80 %. Each model forecasts with the noise correlation and spread its
training chose on validation episodes (simgan.forecast_calibration); coverage with independent noise at spread 1
(uncalibrated) is shown beside it.

Speed: a PETS-sized plan, 350 candidates x 20 particles x horizon 15 x 5 CEM iterations = 525,000 model
transitions through ``simgan.forecast`` (open-loop plans, no realism scoring), GAN against ensemble, same run.

Prints a table and writes JSON (default results/bench_forecast.json) and a plot beside it (same name, .png):
coverage per env against the target band, and the planning workload's seconds per model against 1.5 s.
``--plot-from JSON`` redraws the plot of an earlier run.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import envs
import simgan
from simgan.ensemble import EnsembleConfig
from simgan.ensemble_training import train_ensemble
from simgan.fsutil import atomic_write_figure, atomic_write_json
from simgan.training import TrainConfig

ENVS = {
    "kicked": "simgan/KickedPendulum-v0",
    "forking": "simgan/ForkingPointMass-v0",
    "pendulum": "Pendulum-v1",
}
TARGET_COVERAGE, TOLERANCE = 0.80, 0.07


def set_real_state(env, obs: np.ndarray) -> None:
    """Put a real env at the state behind ``obs`` (simgan's envs have set_state; Pendulum-v1 is set by hand)."""
    inner = env.unwrapped
    if hasattr(inner, "set_state") and not hasattr(inner, "model"):
        inner.set_state(obs)
    elif type(inner).__name__ == "PendulumEnv":
        inner.state = np.array([np.arctan2(obs[1], obs[0]), obs[2]], dtype=np.float64)
    else:
        raise ValueError(f"cannot set the state of {type(inner).__name__}")


def real_futures(env_id: str, start: np.ndarray, plan: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """N x H x obs_dim real trajectories from ``start`` under the open-loop ``plan`` (H x act_dim)."""
    env = envs.make_env(env_id)
    env.reset(seed=seed)
    horizon = len(plan)
    out = np.full((num_samples, horizon, len(start)), np.nan, np.float32)
    for n in range(num_samples):
        set_real_state(env, start)
        for t in range(horizon):
            obs, _, terminated, _, _ = env.step(plan[t])
            out[n, t] = obs
            if terminated:
                break
    env.close()
    return out


def real_batch(
    env_id: str, starts: np.ndarray, plans: np.ndarray, num_samples: int, seed: int
) -> list[np.ndarray]:
    """The real futures of every start state under its plan (:func:`real_futures`), rolled once and shared by all
    the forecasts scored against them."""
    return [real_futures(env_id, start, plans[b], num_samples, seed + b) for b, start in enumerate(starts)]


def coverage(
    model,
    real: list[np.ndarray],
    starts: np.ndarray,
    plans: np.ndarray,
    num_samples: int,
    seed: int,
    rho: float | None = None,
    spread: float | None = None,
) -> float:
    """Share of the ``real`` future states (:func:`real_batch`) inside the model forecast's per-step 10-90 % band.

    ``rho``, ``spread``: the forecast's noise correlation and spread (None: the model's calibrated values)."""
    result = simgan.forecast(
        model,
        starts,
        actions=plans,
        horizon=plans.shape[1],
        num_samples=num_samples,
        seed=seed,
        noise_correlation=rho,
        noise_spread=spread,
        compute_realism=False,
    )
    q = result.quantiles((0.1, 0.9))  # 2 x B x H x obs_dim
    inside, total = 0, 0
    for b, futures in enumerate(real):
        valid = np.isfinite(futures) & np.isfinite(q[0, b])[None]
        hit = (futures >= q[0, b][None]) & (futures <= q[1, b][None])
        inside += int((hit & valid).sum())
        total += int(valid.sum())
    return inside / max(total, 1)


def calibration_row(gan, ensemble, env_id, starts, plans, args, gan_time: float, ens_time: float) -> dict:
    """Coverage of both models' 10-90 % bands on one env, with their training times."""
    real = real_batch(env_id, starts, plans, args.samples, args.seed)
    row = {
        "env": env_id,
        # each model forecasts with the noise correlation and spread its training calibrated on validation episodes
        "gan_noise_correlation": gan.noise_correlation,
        "ensemble_noise_correlation": ensemble.noise_correlation,
        "gan_noise_spread": gan.noise_spread,
        "ensemble_noise_spread": ensemble.noise_spread,
        "gan_coverage": coverage(gan, real, starts, plans, args.samples, args.seed),
        "ensemble_coverage": coverage(ensemble, real, starts, plans, args.samples, args.seed),
        # uncalibrated: independent noise at the model's one-step spread
        "gan_coverage_independent_noise": coverage(
            gan, real, starts, plans, args.samples, args.seed, rho=0.0, spread=1.0
        ),
        "ensemble_coverage_independent_noise": coverage(
            ensemble, real, starts, plans, args.samples, args.seed, rho=0.0, spread=1.0
        ),
        "gan_train_s": gan_time,
        "ensemble_train_s": ens_time,
    }
    row["gan_pass"] = abs(row["gan_coverage"] - TARGET_COVERAGE) <= TOLERANCE
    return row


def planning_time(
    model, start: np.ndarray, action_space, *, candidates=350, particles=20, horizon=15, iterations=5, seed=0
) -> float:
    """Seconds for a PETS-sized CEM workload through simgan.forecast (median of 3 repeats)."""
    rng = np.random.default_rng(seed)
    states = np.repeat(start[None], candidates, axis=0)
    times = []
    for _ in range(3):
        begin = time.perf_counter()
        for _ in range(iterations):
            plans = rng.uniform(
                action_space.low, action_space.high, size=(candidates, horizon, *action_space.shape)
            ).astype(np.float32)
            simgan.forecast(
                model,
                states,
                actions=plans,
                horizon=horizon,
                num_samples=particles,
                seed=seed,
                compute_realism=False,
            )
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def print_calibration(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\nForecast calibration: share of real futures inside the 10-90 % band (target {TARGET_COVERAGE:.0%} "
        f"+- {TOLERANCE:.0%}); {args.starts} start states x {args.samples} futures x {args.horizon} steps"
    )
    print(
        "| env | GAN coverage (rho, spread) | ensemble coverage (rho, spread) | GAN within target | GAN / ensemble "
        "with independent noise, spread 1 | GAN train s | ensemble train s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gan_noise = f"{r['gan_noise_correlation']:g}, {r.get('gan_noise_spread', 1.0):g}"
        ens_noise = f"{r['ensemble_noise_correlation']:g}, {r.get('ensemble_noise_spread', 1.0):g}"
        print(
            f"| {r['env']} | {r['gan_coverage']:.1%} ({gan_noise}) | "
            f"{r['ensemble_coverage']:.1%} ({ens_noise}) | "
            f"{'yes' if r['gan_pass'] else 'no'} | {r['gan_coverage_independent_noise']:.1%} / "
            f"{r['ensemble_coverage_independent_noise']:.1%} | {r['gan_train_s']:.0f} | {r['ensemble_train_s']:.0f} |"
        )


def starts_and_plans(data, space, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The held-out start states (S x obs_dim) and random open-loop plans (S x H x act_dim) every model is scored on."""
    validation = data.validation
    starts = validation.obs[
        np.random.default_rng(args.seed).choice(len(validation), args.starts, replace=False)
    ]
    plans = (
        np.random.default_rng(args.seed + 1)
        .uniform(space.low, space.high, size=(args.starts, args.horizon, *space.shape))
        .astype(np.float32)
    )
    return starts, plans


def machine_info(args: argparse.Namespace) -> dict:
    return {"cpu_threads": args.threads, "python": platform.python_version(), "torch": torch.__version__}


def saved_model_coverage(args: argparse.Namespace) -> None:
    """``--models``: the calibration coverage of saved models, with their own and with independent noise."""
    env_id = ENVS[args.envs[0]]
    models = {run: simgan.load_model(run, device="cpu") for run in args.models}  # all refused before any work
    for run, model in models.items():
        if model.info.env_id != env_id:
            raise SystemExit(
                f"--models {run}: expected a model of {env_id} (--envs), got one of {model.info.env_id}"
            )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = simgan.collect(
            env_id, steps=args.data_steps, workers=0, out=Path(tmp) / "data", seed=args.seed, progress=False
        )
        starts, plans = starts_and_plans(data, data.action_space, args)
        real = real_batch(env_id, starts, plans, args.samples, args.seed)
        for run, model in models.items():
            own = coverage(model, real, starts, plans, args.samples, args.seed)
            rows.append(
                {
                    "env": env_id,
                    "model": str(run),
                    "noise_correlation": model.noise_correlation,
                    "noise_spread": model.noise_spread,
                    "coverage": own,
                    "coverage_independent_noise": coverage(
                        model, real, starts, plans, args.samples, args.seed, rho=0.0, spread=1.0
                    ),
                    "pass": abs(own - TARGET_COVERAGE) <= TOLERANCE,
                }
            )
            print(
                f"{run}: coverage {own:.1%} (rho {model.noise_correlation:g}, spread {model.noise_spread:g})",
                flush=True,
            )
    print("| model | coverage (rho, spread) | with independent noise, spread 1 |\n|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['coverage']:.1%} ({r['noise_correlation']:g}, {r['noise_spread']:g}) | "
            f"{r['coverage_independent_noise']:.1%} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"args": vars(args), "machine": machine_info(args), "saved_models": rows})
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--data-steps", type=int, default=20000, help="random-policy transitions per env")
    parser.add_argument("--gan-steps", type=int, default=None, help="GAN steps (default: TrainConfig's)")
    parser.add_argument(
        "--ensemble-steps", type=int, default=None, help="ensemble steps (default: EnsembleConfig's)"
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=100,
        help="held-out start states per env (a start's futures share one error: with 10, coverage moved by about "
        "5 points with the choice of starts)",
    )
    parser.add_argument(
        "--samples", type=int, default=200, help="forecast samples and real rollouts per state"
    )
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="only the planning workload, on Pendulum-v1 models trained for 50 steps (speed does not depend on "
        "the weights); for timing on an otherwise idle machine",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="RUN",
        help="train nothing: measure the calibration coverage of these saved models (of the first --envs env, "
        "trained on the data this script collects, e.g. by bench_fidelity.py) on the same start states and plans",
    )
    parser.add_argument("--out", default="results/bench_forecast.json")
    parser.add_argument(
        "--plot-from",
        default=None,
        metavar="JSON",
        help="measure nothing: draw the plot of an earlier run's JSON to --out with the suffix .png",
    )
    args = parser.parse_args()
    if args.plot_from is not None:
        figure = Path(args.out).with_suffix(".png")
        write_plot(json.loads(Path(args.plot_from).read_text()), figure)
        print(f"wrote {figure}")
        return
    torch.set_num_threads(args.threads)
    if args.models:
        saved_model_coverage(args)
        return

    rows, speed = [], None
    if args.speed_only:
        args.envs, args.data_steps, args.gan_steps, args.ensemble_steps = ["pendulum"], 2000, 50, 50
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.envs:
            env_id = ENVS[key]
            data = simgan.collect(
                env_id,
                steps=args.data_steps,
                workers=0,
                out=Path(tmp) / key / "data",
                seed=args.seed,
                progress=False,
            )
            gan_config = TrainConfig(seed=args.seed, steps=args.gan_steps, figures=False)
            t0 = time.perf_counter()
            gan = simgan.train(data, Path(tmp) / key / "gan", gan_config, progress=False)
            gan_time = time.perf_counter() - t0
            ens_kwargs = {"seed": args.seed, "progress": False}
            if args.ensemble_steps is not None:
                ens_kwargs["steps"] = args.ensemble_steps
            t0 = time.perf_counter()
            ensemble = train_ensemble(data, Path(tmp) / key / "ens", EnsembleConfig(**ens_kwargs))
            ens_time = time.perf_counter() - t0

            space = gan.info.action_space
            starts, plans = starts_and_plans(data, space, args)
            if not args.speed_only:
                rows.append(calibration_row(gan, ensemble, env_id, starts, plans, args, gan_time, ens_time))
            if env_id == "Pendulum-v1" or speed is None:
                gan_s = planning_time(gan, starts[0], space, seed=args.seed)
                ens_s = planning_time(ensemble, starts[0], space, seed=args.seed)
                speed = {
                    "env": env_id,
                    "transitions": 350 * 20 * 15 * 5,
                    "gan_s": gan_s,
                    "ensemble_s": ens_s,
                    # the same workload with each model's matmuls in bfloat16 (simgan.at_precision)
                    **{
                        f"{name}_bfloat16_s": planning_time(
                            simgan.at_precision(model, "bfloat16"), starts[0], space, seed=args.seed
                        )
                        for name, model in (("gan", gan), ("ensemble", ensemble))
                    },
                    "speedup": ens_s / gan_s,
                    "gan_pass_1_5s": gan_s <= 1.5,
                    "speedup_pass_3x": ens_s / gan_s >= 3,
                }

    if rows:
        print_calibration(rows, args)
    print(
        f"\nPETS-sized planning workload on {speed['env']}: 350 x 20 x 15 x 5 = {speed['transitions']:,} transitions"
    )
    print("| model | seconds | transitions/s |")
    print("|---|---|---|")
    for name in ("gan", "ensemble", "gan_bfloat16", "ensemble_bfloat16"):
        print(f"| {name} | {speed[name + '_s']:.2f} | {speed['transitions'] / speed[name + '_s']:,.0f} |")
    print(
        f"GAN <= 1.5 s: {'yes' if speed['gan_pass_1_5s'] else 'no'}; "
        f"GAN >= 3x faster than ensemble: {'yes' if speed['speedup_pass_3x'] else 'no'} ({speed['speedup']:.2f}x)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "machine": machine_info(args), "calibration": rows, "planning": speed}
    atomic_write_json(out, report)
    write_plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def write_plot(report: dict, path: Path) -> None:
    """Coverage of the 10-90 % band per env and model against the target band (when the run measured it), and
    the planning workload's seconds per model against the 1.5 s target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, speed = report["calibration"], report["planning"]
    panels = 2 if rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    if rows:
        ax = axes[0][0]
        x = np.arange(len(rows))
        for offset, (model, color) in zip((-0.2, 0.2), (("gan", "C0"), ("ensemble", "C1"))):
            ax.bar(x + offset, [r[f"{model}_coverage"] for r in rows], 0.4, color=color, label=model)
        low, high = TARGET_COVERAGE - TOLERANCE, TARGET_COVERAGE + TOLERANCE
        ax.axhspan(low, high, color="green", alpha=0.12, label=f"target {low:.0%}-{high:.0%}")
        ax.set_xticks(x, [r["env"].removeprefix("simgan/") for r in rows], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("real futures inside the 10-90 % band")
        ax.set_title("forecast calibration")
        ax.legend(fontsize=8, loc="lower right")
    ax = axes[0][-1]
    names = [n for n in ("gan", "ensemble", "gan_bfloat16", "ensemble_bfloat16") if f"{n}_s" in speed]
    ax.bar(names, [speed[f"{n}_s"] for n in names], color=["C0", "C1", "C0", "C1"][: len(names)])
    ax.axhline(1.5, color="red", linestyle=":", label="GAN target: 1.5 s")
    ax.set_ylabel("seconds")
    ax.set_title(f"PETS-sized planning workload on {speed['env']} ({speed['transitions']:,} transitions)")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_figure(fig, path)


if __name__ == "__main__":
    main()
