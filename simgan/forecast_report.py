"""Presenting a forecast (:class:`simgan.forecasting.Forecast`): a PNG fan chart, a printable table, JSON text.

    fan_chart(result, "fan.png", state_index=0)   # median and 10-90 / 25-75 % bands, live counts, returns
    print(summary_table(result))                  # one row per start state
    dumps_summary(result)                         # Forecast.summary() as indented JSON

matplotlib is imported only when a chart is drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from simgan.forecasting import Forecast
from simgan.fsutil import atomic_write_figure


def fan_chart(
    result: Forecast, path: str | Path, *, state_index: int = 0, dim_names: list[str] | None = None
) -> None:
    """Write a PNG fan chart: median and 10-90 / 25-75 % bands per state dimension over time, live-branch
    counts, and a histogram of returns, for one start state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = result.quantiles((0.1, 0.25, 0.5, 0.75, 0.9))[:, state_index]  # 5 x H x obs_dim
    obs_dim = q.shape[-1]
    horizon = q.shape[1]
    t = np.arange(1, horizon + 1)
    cols = min(3, obs_dim + 1)
    rows = math.ceil((obs_dim + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for d in range(obs_dim):
        ax = axes.flat[d]
        start = result.start_states[state_index, d]
        ax.fill_between(
            np.r_[0, t],
            np.r_[start, q[0, :, d]],
            np.r_[start, q[4, :, d]],
            alpha=0.25,
            color="C0",
            label="10-90 %",
        )
        ax.fill_between(
            np.r_[0, t],
            np.r_[start, q[1, :, d]],
            np.r_[start, q[3, :, d]],
            alpha=0.45,
            color="C0",
            label="25-75 %",
        )
        ax.plot(np.r_[0, t], np.r_[start, q[2, :, d]], color="C0", lw=1.8, label="median")
        ax.set_title(dim_names[d] if dim_names else f"obs[{d}]")
        ax.set_xlabel("step")
        if d == 0:
            ax.legend(fontsize=7, loc="best")
    ax = axes.flat[obs_dim]
    ax.hist(result.returns[state_index], bins=40, color="C1", alpha=0.8)
    ax.set_title(f"returns (N={result.shape[1]})")
    ax.set_xlabel("return")
    for extra in list(axes.flat)[obs_dim + 1 :]:
        extra.axis("off")
    live = result.live_counts()[state_index]
    fig.suptitle(
        f"forecast from state {state_index}: {result.shape[1]} futures x {horizon} steps "
        f"(live at end: {live[-1]})"
    )
    fig.tight_layout()
    atomic_write_figure(fig, path)


def summary_table(result: Forecast) -> str:
    """A printable table: one row per start state."""
    summary = result.summary()
    lines = [
        f"{'state':>5} {'return mean':>12} {'std':>9} {'p10':>10} {'p50':>10} {'p90':>10} {'P(term)':>8} {'live':>6}"
    ]
    for b, s in enumerate(summary["states"]):
        rq = s["return_quantiles"]
        lines.append(
            f"{b:>5} {s['return_mean']:>12.3f} {s['return_std']:>9.3f} {rq['0.1']:>10.3f} {rq['0.5']:>10.3f} "
            f"{rq['0.9']:>10.3f} {s['termination_probability_final']:>8.3f} {s['live_final']:>6}"
        )
    return "\n".join(lines)


def dumps_summary(result: Forecast) -> str:
    return json.dumps(result.summary(), indent=2)


__all__ = ["dumps_summary", "fan_chart", "summary_table"]
