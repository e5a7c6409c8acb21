"""Test-only environments: failure injection for the collection reliability tests."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class CrashOncePendulum(PendulumEnv):
    """Pendulum whose process dies (``os._exit(1)``) once, at a chosen step, to simulate a worker crash.

    The first instance (in any process) to reach ``crash_at_step`` total steps while ``marker`` does not exist
    creates the marker atomically (``O_CREAT | O_EXCL``) and then kills its process without cleanup. After that
    every instance behaves exactly like Pendulum-v1, so a restarted worker re-simulates the same transitions.

    Args:
        marker: path of the marker file that records that the crash has happened.
        crash_at_step: total steps (over all episodes) of this instance at which to crash.
    """

    def __init__(self, marker: str, crash_at_step: int = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = str(marker)
        self.crash_at_step = int(crash_at_step)
        self.total_steps = 0

    def step(self, action: np.ndarray):
        self.total_steps += 1
        if self.total_steps == self.crash_at_step and not os.path.exists(self.marker):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:  # another worker crashed first
                return super().step(action)
            os.close(fd)
            os._exit(1)
        return super().step(action)
