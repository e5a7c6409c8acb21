"""Benchmark rollout collection: real env steps/s of simgan.collect on Ray against plain gymnasium loops.

    python scripts/bench_collect.py --out results/bench_collect.json

For each env, in the same run: a plain single-process loop (one env, ``action_space.sample()``), a gymnasium
``SyncVectorEnv`` with the same K sub-envs collect uses, and ``simgan.collect`` with 1 and 2 Ray workers.
Ray's start-up is measured once and reported separately. ``collect`` is timed at two budgets N and 2N and its
steady-state rate is ``N / (t(2N) - t(N))``, which cancels the fixed per-call costs (spawning actor processes,
importing gymnasium/MuJoCo in them, writing the manifest); those fixed costs are reported as ``overhead_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from envs import make_env
from simgan.collect import collect, default_envs_per_worker

# env id -> steps for the baselines and budget N for collect (collect also runs 2N)
DEFAULT_STEPS = {"Pendulum-v1": 200_000, "HalfCheetah-v5": 40_000}
TARGETS = {  # (env, measurement, baseline, minimum ratio) from issue 2
    ("HalfCheetah-v5", "ray_2", "single_loop", 1.7),
    ("Pendulum-v1", "ray_2", "sync_vector", 0.9),
}


def bench_single_loop(env_id: str, steps: int, seed: int) -> float:
    env = make_env(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def bench_sync_vector(env_id: str, steps: int, num_envs: int, seed: int) -> float:
    vec = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(num_envs)])
    vec.reset(seed=seed)
    vec.action_space.seed(seed)
    rounds = steps // num_envs
    start = time.perf_counter()
    for _ in range(rounds):
        vec.step(vec.action_space.sample())  # NEXT_STEP autoreset: a reset step counts as a step here
    elapsed = time.perf_counter() - start
    vec.close()
    return rounds * num_envs / elapsed


def bench_collect(env_id: str, steps: int, workers: int, root: Path) -> dict[str, float]:
    times = []
    for budget in (steps, 2 * steps):
        out = root / f"{env_id}-w{workers}-{budget}"
        start = time.perf_counter()
        collect(env_id, steps=budget, out=out, workers=workers, seed=0, progress=False)
        times.append(time.perf_counter() - start)
        shutil.rmtree(out)
    rate = steps / max(times[1] - times[0], 1e-9)
    return {"steps_per_s": rate, "overhead_s": times[0] - steps / rate, "wall_s_2n": times[1]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_STEPS), help="env ids to benchmark")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every step budget (e.g. 0.1 for a smoke run)"
    )
    parser.add_argument(
        "--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the embedded Ray cluster"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every env and action sampler")
    parser.add_argument("--out", default="results/bench_collect.json", help="where to write the JSON results")
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - start

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp:
        for env_id in args.envs:
            steps = max(1000, int(DEFAULT_STEPS.get(env_id, 50_000) * args.scale))
            k = default_envs_per_worker(gym.spec(env_id))
            print(f"{env_id}: {steps:,} steps per measurement, K = {k}", flush=True)
            row: dict = {"steps": steps, "envs_per_worker": k}
            row["single_loop"] = bench_single_loop(env_id, steps, args.seed)
            row["sync_vector"] = bench_sync_vector(env_id, steps, k, args.seed)
            for workers in (1, 2):
                stats = bench_collect(env_id, steps, workers, Path(tmp))
                row[f"ray_{workers}"] = stats["steps_per_s"]
                row[f"ray_{workers}_overhead_s"] = stats["overhead_s"]
                row[f"ray_{workers}_end_to_end"] = 2 * steps / stats["wall_s_2n"]
            results[env_id] = row
    ray.shutdown()

    names = ["single_loop", "sync_vector", "ray_1", "ray_2"]
    print()
    print(
        f"{'env':<16}"
        + "".join(f"{n + ' steps/s':>20}" for n in names)
        + f"{'ray_2/single':>14}{'ray_2/sync':>12}"
    )
    for env_id, row in results.items():
        print(
            f"{env_id:<16}"
            + "".join(f"{row[n]:>20,.0f}" for n in names)
            + f"{row['ray_2'] / row['single_loop']:>13.2f}x{row['ray_2'] / row['sync_vector']:>11.2f}x"
        )
    print(f"\nRay start-up (embedded cluster, {args.num_cpus} CPUs): {ray_start_s:.1f} s")
    for env_id, row in results.items():
        print(
            f"{env_id}: fixed per-collect overhead (actor start, imports, manifest) "
            f"ray_1 {row['ray_1_overhead_s']:.1f} s, ray_2 {row['ray_2_overhead_s']:.1f} s; end-to-end steps/s "
            f"incl. overhead at 2N: ray_1 {row['ray_1_end_to_end']:,.0f}, ray_2 {row['ray_2_end_to_end']:,.0f}"
        )
    checks = []
    for env_id, measured, baseline, minimum in sorted(TARGETS):
        if env_id not in results:
            continue
        ratio = results[env_id][measured] / results[env_id][baseline]
        checks.append(
            {
                "env": env_id,
                "measured": measured,
                "baseline": baseline,
                "target": minimum,
                "ratio": ratio,
                "pass": bool(ratio >= minimum),
            }
        )
        print(
            f"target {env_id}: {measured} / {baseline} = {ratio:.2f}x (>= {minimum}x) "
            f"{'PASS' if ratio >= minimum else 'FAIL'}"
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "python scripts/bench_collect.py "
        + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "envs")
        + " --envs "
        + " ".join(args.envs),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "gymnasium": gym.__version__,
            "ray": ray.__version__,
            "numpy": np.__version__,
        },
        "ray_start_s": ray_start_s,
        "results": results,
        "targets": checks,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
