"""Training configs shared by tests: a GAN small enough to train in a second or two on one CPU thread."""

from __future__ import annotations

from simgan.train_config import TrainConfig

# 20 steps of 32-unit networks, evaluated twice; tests that need another step count take dataclasses.replace of it.
TINY_GAN = TrainConfig(
    steps=20,
    eval_every=10,
    eval_size=256,
    batch_size=32,
    mean_hidden=(32, 32),
    residual_hidden=(32,),
    disc_hidden=(32,),
    figures=False,
    device="cpu",
)
