"""scripts/bench_sim.py: rounds of measurements, each row and baseline keeping its best (on real envs)."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_script


@pytest.fixture(scope="module")
def bench_sim():
    return load_script("bench_sim")


def _run(bench_sim, monkeypatch, argv: list[str]) -> int:
    monkeypatch.setattr("sys.argv", ["bench_sim.py", *argv])
    return bench_sim.main()


def test_every_row_keeps_its_best_round_and_the_ratio_uses_the_best_baseline(
    bench_sim, monkeypatch, tmp_path
):
    out = tmp_path / "sim"
    argv = ["--envs", "Pendulum-v1", "--num-envs", "2", "--precisions", "float32", "--seconds", "0.03"]
    assert _run(bench_sim, monkeypatch, [*argv, "--rounds", "2", "--threads", "1", "--out", str(out)]) == 0

    report = json.loads(out.with_suffix(".json").read_text())
    meta, rows = report["meta"], report["rows"]
    assert meta["rounds"] == 2
    # baselines: once before the first round and once after each round
    assert {k: len(v) for k, v in meta["baseline_measurements"].items()} == {
        "Pendulum-v1": 3,
        "HalfCheetah-v5": 3,
    }
    best_baseline = max(meta["baseline_measurements"]["Pendulum-v1"])
    assert meta["baselines_transitions_per_s"]["Pendulum-v1"] == best_baseline

    # realism on/off x numpy/torch mode, each measured in both rounds
    assert sorted((r["realism"], r["mode"]) for r in rows) == [
        (False, "numpy"),
        (False, "torch"),
        (True, "numpy"),
        (True, "torch"),
    ]
    for row in rows:
        assert len(row["round_transitions_per_s"]) == 2 and len(row["round_matmul_gflops"]) == 2
        assert row["transitions_per_s"] == max(row["round_transitions_per_s"]) > 0
        assert row["matmul_gflops"] == max(row["round_matmul_gflops"])
        assert row["speedup_vs_baseline"] == pytest.approx(row["transitions_per_s"] / best_baseline)
        median_round = sorted(row["round_transitions_per_s"])  # two rounds: their mean
        median_baseline = sorted(meta["baseline_measurements"]["Pendulum-v1"])[1]  # three measurements
        assert row["median_speedup_vs_baseline"] == pytest.approx(sum(median_round) / 2 / median_baseline)
        assert row["fraction_of_matmul"] == pytest.approx(row["gflops"] / row["matmul_gflops"])
    table_rows = [
        line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| Pendulum")
    ]
    assert len(table_rows) == 4
    for line in table_rows:  # the median ratio has its own column, after the best round's
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 11 and cells[6].endswith("vs SyncVectorEnv(64)") and cells[7].endswith("x")
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the plot is drawn again from the JSON alone, measuring nothing
    replot = tmp_path / "again"
    assert (
        _run(bench_sim, monkeypatch, ["--plot-from", str(out.with_suffix(".json")), "--out", str(replot)])
        == 0
    )
    assert replot.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not replot.with_suffix(".json").exists()


def test_rounds_below_one_are_refused_before_anything_is_measured(bench_sim, monkeypatch, tmp_path, capsys):
    out = tmp_path / "sim"
    with pytest.raises(SystemExit) as exc:
        _run(bench_sim, monkeypatch, ["--rounds", "0", "--out", str(out)])
    assert exc.value.code == 2
    assert "--rounds: expected a count >= 1, got 0" in capsys.readouterr().err
    assert not out.with_suffix(".json").exists()


def test_compile_adds_compiled_rows_beside_the_eager_ones(bench_sim, monkeypatch, tmp_path):
    out = tmp_path / "sim"
    argv = ["--envs", "Pendulum-v1", "--num-envs", "3", "--precisions", "float32", "--seconds", "0.03"]
    assert _run(bench_sim, monkeypatch, [*argv, "--compile", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["meta"]["compile"] is True
    rows = report["rows"]
    assert sorted((r["realism"], r["mode"]) for r in rows) == sorted(
        (realism, mode)
        for realism in (False, True)
        for mode in ("numpy", "torch", "numpy+compile", "torch+compile")
    )
    for row in rows:  # FLOPs are counted on the eager step for both
        twin = next(
            r
            for r in rows
            if r["realism"] == row["realism"] and r["mode"] == row["mode"].removesuffix("+compile")
        )
        assert row["transitions_per_s"] > 0 and row["flops_per_step"] == pytest.approx(twin["flops_per_step"])
    assert sum("+compile |" in line for line in out.with_suffix(".md").read_text().splitlines()) == 4
