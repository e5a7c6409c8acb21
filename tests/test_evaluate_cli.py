"""``simgan evaluate`` end to end, as a subprocess: side-by-side table, JSON, conditional metrics, user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import simgan
from simgan.ensemble import EnsembleConfig
from simgan.ensemble_training import train_ensemble

TINY = {"members": 3, "elites": 2, "hidden": (32, 32), "steps": 60, "eval_every": 30, "progress": False}


def _simgan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simgan", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def kicked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kicked")
    data = simgan.collect(
        "simgan/KickedPendulum-v0", steps=1200, workers=0, out=root / "data", progress=False
    )
    for seed in (0, 1):
        train_ensemble(data, out=root / f"ens{seed}", config=EnsembleConfig(seed=seed, **TINY))
    return {"data": root / "data", "a": root / "ens0", "b": root / "ens1", "root": root}


def test_evaluate_compares_models_side_by_side(kicked: dict[str, Path]) -> None:
    out = kicked["root"] / "results.json"
    result = _simgan(
        "evaluate",
        "--model", str(kicked["a"]), str(kicked["b"]),
        "--data", str(kicked["data"]),
        "--out", str(out),
        "--device", "cpu",
        "--max-samples", "300",
        "--horizons", "1", "5",
        "--conditional-points", "2",
        "--conditional-samples", "200",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert "ens0" in header and "ens1" in header
    for metric in ("mmd2", "sliced_w1", "mean_error", "rollout_mse/k5", "cond_mmd2", "termination_f1"):
        assert any(line.startswith(metric) for line in result.stdout.splitlines()), metric
    payload = json.loads(out.read_text())
    assert payload["env_id"] == "simgan/KickedPendulum-v0"
    models = payload["models"]
    assert set(models) == {str(kicked["a"]), str(kicked["b"])}
    metrics = models[str(kicked["a"])]["metrics"]
    assert models[str(kicked["a"])]["kind"] == "GaussianEnsemble"
    assert metrics["cond_sliced_w1"] > 0 and metrics["rollout_windows/k5"] > 0
    assert "rollout_mse/k25" not in metrics  # only the horizons asked for


def test_evaluate_reports_user_errors_in_one_line(kicked: dict[str, Path], tmp_path: Path) -> None:
    missing = _simgan("evaluate", "--model", str(tmp_path / "nope"), "--data", str(kicked["data"]))
    assert missing.returncode == 2
    assert "model.json" in missing.stderr and "Traceback" not in missing.stderr
    other = simgan.collect("Pendulum-v1", steps=400, workers=0, out=tmp_path / "pendulum", progress=False)
    mismatch = _simgan("evaluate", "--model", str(kicked["a"]), "--data", str(other.path))
    assert mismatch.returncode == 2
    assert "simgan/KickedPendulum-v0" in mismatch.stderr and "Traceback" not in mismatch.stderr


def test_evaluate_scores_a_model_at_each_precision(kicked: dict[str, Path]) -> None:
    out = kicked["root"] / "precision.json"
    result = _simgan(
        "evaluate",
        "--model", str(kicked["a"]),
        "--data", str(kicked["data"]),
        "--out", str(out),
        "--device", "cpu",
        "--max-samples", "300",
        "--horizons", "5",
        "--conditional-points", "0",
        "--precision", "float32", "bfloat16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ens0@bfloat16" in result.stdout.splitlines()[0]
    models = json.loads(out.read_text())["models"]
    full, half = models[str(kicked["a"])], models[f"{kicked['a']}@bfloat16"]
    assert (full["precision"], half["precision"]) == ("float32", "bfloat16")
    for metric in ("mean_error", "rollout_mse/k5"):
        f, h = full["metrics"][metric], half["metrics"][metric]
        # the same model and noise: bfloat16's rounding moves the error a little, not a lot
        assert h != f and h == pytest.approx(f, rel=0.2), metric
    bad = _simgan(
        "evaluate", "--model", str(kicked["a"]), "--data", str(kicked["data"]), "--precision", "fp8"
    )
    assert bad.returncode == 2 and "invalid choice: 'fp8'" in bad.stderr
