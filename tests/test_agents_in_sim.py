"""Learning test: SAC trained only inside a learned Pendulum (a conditional GAN) swings up the *real* Pendulum.

The recipe is one iteration of ``simgan loop`` (MBPO): random real data -> GAN -> SAC in branched rollouts of the
learned env (32 sub-envs started at real states of the data, 50-step horizons) -> evaluation in the real env.
Budget (measured on 2 shared CPU cores: 45-70 s, up to 3 minutes under heavy load): 4,000 real transitions, 1,000 GAN steps, 16,000
simulated transitions with 0.25 SAC updates each (about 3,750 updates). Real returns reached with this recipe
for seeds 0, 1, 2, 4: -166, -191, -216, -217 (random policy: about -1250); with only 2,000 real transitions one
seed in three failed (the policy left the data's support, where the GAN is wrong), hence 4,000.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents import RandomPolicy, SACConfig, evaluate_policy, train_sac
from simgan.collection import collect
from simgan.sim_vector_env import SimVectorEnv
from simgan.training import TrainConfig, train


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: fastest single-threaded, and fair to the other tests' processes
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sac_trained_in_a_learned_pendulum_solves_the_real_one(tmp_path: Path) -> None:
    real = gym.make("Pendulum-v1")
    random_result = evaluate_policy(
        RandomPolicy(real.observation_space, real.action_space, seed=0), real, episodes=10, seed=100
    )

    # ---- the learned simulator: a GAN fitted to 4,000 random real transitions ------------------------------
    data = collect("Pendulum-v1", steps=4000, out=tmp_path / "data", seed=1, progress=False)
    model = train(
        data,
        tmp_path / "model",
        TrainConfig(steps=1000, figures=False, eval_every=500, seed=1, device="cpu"),
        progress=False,
    )

    # ---- SAC sees only the learned env: branched 50-step rollouts from real states -----------------------------
    sim = SimVectorEnv(
        model,
        num_envs=32,
        initial_states=data.transitions.obs,
        max_episode_steps=50,
        compute_realism=False,
        seed=1,
    )
    config = SACConfig(
        total_steps=16_000, learning_starts=1000, updates_per_step=0.25, hidden_size=128, seed=1
    )
    agent = train_sac(sim, config, progress=False).agent

    # ---- the result holds in the real env (and the learned env agrees on full episodes) -------------------------
    in_real = evaluate_policy(agent, real, episodes=10, seed=100)
    in_sim = evaluate_policy(
        agent, SimVectorEnv(model, num_envs=10, compute_realism=False, seed=1), episodes=10, seed=100
    )
    print(f"random {random_result}\nSAC in real env {in_real}\nSAC in learned env {in_sim}")
    assert random_result.mean_return < -900
    assert in_real.mean_return > -400, f"real {in_real}, learned {in_sim}"
    # The learned env under-estimates returns (seen: -181 to -405 for agents scoring about -200 for real);
    # what must hold is that it, too, ranks the trained agent far above random.
    assert in_sim.mean_return > random_result.mean_return / 2
    assert np.median(in_real.returns) > -300  # most episodes swing up and balance
