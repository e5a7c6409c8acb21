"""Study options of the benchmark scripts: bench_fidelity --gan-lr-mean, bench_forecast --models."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from bench_scripts import SCRIPTS, load_script
from tiny_configs import TINY_GAN

import simgan


@pytest.fixture(scope="module")
def fidelity():
    return load_script("bench_fidelity")


@pytest.fixture(scope="module")
def forecast_bench():
    return load_script("bench_forecast")


def _fidelity_args(fidelity, argv: list[str]) -> argparse.Namespace:
    import sys

    saved = sys.argv
    try:
        sys.argv = ["bench_fidelity.py", *argv]
        return fidelity.parse_args()
    finally:
        sys.argv = saved


def test_fidelity_lr_mean_reaches_the_gan_and_is_recorded(fidelity, tmp_path):
    """--gan-lr-mean trains the GAN with that rate (its model.json says so) and the run's args keep it."""
    dataset = simgan.collect(
        "Pendulum-v1", steps=400, workers=0, out=tmp_path / "data", seed=0, progress=False
    )
    argv = [
        "--gan-lr-mean",
        "3e-3",
        "--gan-steps",
        "20",
        "--gan-mean-hidden",
        "32",
        "32",
        "--eval-samples",
        "64",
    ]
    args = _fidelity_args(fidelity, argv)
    stored_ensemble = {"metrics": {"mean_error": 1.0}, "train_s": 0.0}
    runs = fidelity.train_pair(dataset, "Pendulum-v1", 0, args, tmp_path, stored_ensemble)
    config = json.loads((tmp_path / "runs" / "Pendulum-v1__gan__0" / "model.json").read_text())["config"]
    assert config["train"]["lr_mean"] == pytest.approx(3e-3)
    assert np.isfinite(runs["gan"]["metrics"]["mean_error"])
    assert vars(args)["gan_lr_mean"] == pytest.approx(3e-3)


def test_fidelity_append_refuses_another_lr_mean(fidelity, tmp_path):
    """Seeds trained at different mean-head rates are never averaged into one row."""
    earlier = _fidelity_args(fidelity, ["--gan-lr-mean", "2e-3"])
    (tmp_path / "results.json").write_text(json.dumps({"args": vars(earlier), "envs": {}}))
    now = _fidelity_args(fidelity, ["--append", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"gan_lr_mean=0\.002.*None"):
        fidelity.stored_results(tmp_path, now, [1])
    same = _fidelity_args(fidelity, ["--append", "--gan-lr-mean", "2e-3", "--out", str(tmp_path)])
    assert fidelity.stored_results(tmp_path, same, [1])["envs"] == {}


def test_fidelity_refuses_to_mix_results_of_another_point_count(fidelity, tmp_path):
    """--cond-points: results made before it used 8 points per seed; neither --ensemble-from nor --append mixes
    them with a run at 128 (the default), and a stored 8 matches --cond-points 8."""
    legacy_args = {k: v for k, v in vars(_fidelity_args(fidelity, [])).items() if k != "cond_points"}
    stored = tmp_path / "results.json"
    stored.write_text(json.dumps({"args": legacy_args, "envs": {}}))
    default = _fidelity_args(fidelity, ["--ensemble-from", str(stored)])
    assert default.cond_points == 128
    with pytest.raises(SystemExit, match=r"cond_points=8, this run has 128"):
        fidelity.stored_ensembles(default)
    assert (
        fidelity.stored_ensembles(
            _fidelity_args(fidelity, ["--ensemble-from", str(stored), "--cond-points", "8"])
        )
        == {}
    )
    with pytest.raises(SystemExit, match=r"cond_points=8, this run has 128"):
        fidelity.stored_results(tmp_path, _fidelity_args(fidelity, ["--append", "--out", str(tmp_path)]), [1])


def test_forecast_models_scores_saved_models_like_the_benchmark(forecast_bench, tmp_path, monkeypatch):
    """--models: the saved model's coverage on the benchmark's own start states and plans, written as JSON."""
    data = simgan.collect("Pendulum-v1", steps=600, workers=0, out=tmp_path / "data", seed=0, progress=False)
    simgan.train(data, tmp_path / "gan", TINY_GAN, progress=False)
    out = tmp_path / "cov.json"
    argv = ["--envs", "pendulum", "--data-steps", "600", "--starts", "2", "--samples", "8", "--horizon", "3"]
    argv += ["--threads", "1", "--models", str(tmp_path / "gan"), "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["bench_forecast.py", *argv])
    forecast_bench.main()
    (row,) = json.loads(out.read_text())["saved_models"]
    assert row["env"] == "Pendulum-v1" and row["model"] == str(tmp_path / "gan")

    # the same number as scoring the model directly on the benchmark's start states and plans
    model = simgan.load_model(tmp_path / "gan", device="cpu")
    args = argparse.Namespace(seed=0, starts=2, horizon=3)
    starts, plans = forecast_bench.starts_and_plans(data, model.info.action_space, args)
    assert starts.shape == (2, 3) and plans.shape == (2, 3, 1)
    real = forecast_bench.real_batch("Pendulum-v1", starts, plans, 8, 0)
    expected = forecast_bench.coverage(model, real, starts, plans, 8, 0)
    assert row["coverage"] == pytest.approx(expected)
    assert 0.0 <= row["coverage_independent_noise"] <= 1.0
    assert row["pass"] == (abs(expected - 0.8) <= 0.07)

    # a model of another env is refused by name before anything is collected or written
    other = tmp_path / "other.json"
    monkeypatch.setattr(
        "sys.argv",
        [
            "bench_forecast.py",
            *argv[:-4],
            "--envs",
            "kicked",
            "--models",
            str(tmp_path / "gan"),
            "--out",
            str(other),
        ],
    )
    with pytest.raises(
        SystemExit, match=r"expected a model of simgan/KickedPendulum-v0 .*got one of Pendulum-v1"
    ):
        forecast_bench.main()
    assert not other.exists()


def test_fidelity_sample_figure_of_a_multimodal_env_is_a_png(fidelity, tmp_path):
    """The figure of both models' samples at one (s, a) over the true next states, written atomically."""
    import envs  # noqa: F401  (registers simgan/KickedPendulum-v0)

    dataset = simgan.collect(
        "simgan/KickedPendulum-v0", steps=400, workers=0, out=tmp_path / "data", seed=0, progress=False
    )
    from simgan.ensemble import EnsembleConfig
    from simgan.ensemble_training import train_ensemble

    models = {
        "gan": simgan.train(dataset, out=tmp_path / "gan", config=TINY_GAN, progress=False),
        "ensemble": train_ensemble(
            dataset, config=EnsembleConfig(members=2, elites=2, hidden=(32,), steps=20, progress=False)
        ),
    }
    figure = tmp_path / "samples.png"
    fidelity.sample_figure("simgan/KickedPendulum-v0", dataset, models, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


@pytest.mark.parametrize("name", ["bench_forecast", "bench_collect", "bench_scale"])
def test_plot_is_redrawn_from_the_stored_results(name, monkeypatch, tmp_path):
    """--plot-from draws the stored results/<name>.json (bench_forecast: coverage and planning times;
    bench_collect: rates and targets; bench_scale: rates per worker count) and measures nothing: no JSON is
    written, no Ray is started."""
    stored = SCRIPTS.parent / "results" / f"{name}.json"
    out = tmp_path / "again.json"
    monkeypatch.setattr("sys.argv", [f"{name}.py", "--plot-from", str(stored), "--out", str(out)])
    load_script(name).main()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not out.exists()


def test_fidelity_checks_plot_is_drawn_from_the_stored_results(fidelity, monkeypatch, tmp_path):
    """--plot-from draws every target's ratio from the stored results files into OUT/checks.png, training nothing."""
    stored = SCRIPTS.parent / "results" / "bench_fidelity"
    files = [str(stored / "multimodal.json"), str(stored / "deterministic.json")]
    monkeypatch.setattr("sys.argv", ["bench_fidelity.py", "--plot-from", *files, "--out", str(tmp_path)])
    fidelity.main()
    assert (tmp_path / "checks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checks.png"]
