"""In-process A/B: SimVectorEnv(compile=True) with the weights frozen (this version) against the same compiled
step without freezing (the previous version's), eager beside them; 1-s windows interleaved over 6 rounds."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
torch.set_num_threads(2)
torch._dynamo.config.recompile_limit = 1024
from bench_sim import fresh_gan, model_info_from_env  # noqa: E402 (scripts/ on the path first)

from simgan.sim_vector_env import SimVectorEnv  # noqa: E402

results = []
for env_id, n, realism in [
    ("Pendulum-v1", 64, False),
    ("Pendulum-v1", 1024, False),
    ("Pendulum-v1", 4096, False),
    ("HalfCheetah-v5", 1024, False),
    ("HalfCheetah-v5", 4096, False),
    ("HalfCheetah-v5", 4096, True),
]:
    model = fresh_gan(model_info_from_env(env_id), torch.device("cpu"))
    envs = {}
    for mode in ("eager", "compiled, not frozen", "compiled, frozen"):
        e = SimVectorEnv(
            model,
            num_envs=n,
            torch_mode=True,
            compute_realism=realism,
            precision="bfloat16",
            seed=0,
            compile=mode != "eager",
        )
        if mode == "compiled, not frozen":  # its own compiled function, traced without freezing
            e.sim._advance = torch.compile(e.sim.advance, dynamic=False, options={"epilogue_fusion": True})
            e.sim.step = (
                lambda sim: (
                    lambda action, active=None, draw_fresh=None: sim._advance(
                        action, active, sim.draw_noise(), None if draw_fresh is None else draw_fresh()
                    )
                )
            )(e.sim)
        e.reset(seed=0)
        acts = torch.as_tensor(np.stack([e.action_space.sample() for _ in range(8)]))
        for i in range(3):
            e.step(acts[i])
        envs[mode] = (e, acts)
    rates = {m: [] for m in envs}
    for _ in range(6):
        for m, (e, acts) in envs.items():
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < 1.0:
                e.step(acts[k % 8])
                k += 1
            rates[m].append(k * n / (time.perf_counter() - t0))
    row = {
        "env_id": env_id,
        "num_envs": n,
        "realism": realism,
        "precision": "bfloat16",
        "mode": "torch",
        "rounds": {m: v for m, v in rates.items()},
    }
    results.append(row)
    print(
        env_id,
        n,
        "realism" if realism else "",
        {m: f"best {max(v):,.0f} median {np.median(v):,.0f}" for m, v in rates.items()},
        flush=True,
    )
out = str(ROOT / "results" / "compile_freezing_study" / "freeze_ab")
Path(out + ".json").write_text(
    json.dumps({"rows": results, "torch": torch.__version__, "threads": 2}, indent=1)
)
with open(out + ".md", "w") as f:
    f.write(
        "| source env | num_envs | realism | eager | compiled, not frozen | compiled, frozen | frozen / not frozen (best, median) |\n|---|---:|---|---:|---:|---:|---:|\n"
    )
    for row in results:
        v = row["rounds"]
        b = {m: max(x) for m, x in v.items()}
        md = {m: float(np.median(x)) for m, x in v.items()}
        f.write(
            f"| {row['env_id']} | {row['num_envs']} | {'on' if row['realism'] else 'off'} | "
            + " | ".join(
                f"{b[m] / 1e3:.0f}k ({md[m] / 1e3:.0f}k)"
                for m in ("eager", "compiled, not frozen", "compiled, frozen")
            )
            + f" | {b['compiled, frozen'] / b['compiled, not frozen']:.2f}x, {md['compiled, frozen'] / md['compiled, not frozen']:.2f}x |\n"
        )
print(Path(out + ".md").read_text())
