"""compile=True: the learned env's step as one torch.compile graph gives the eager step's trajectories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_scripts import load_script
from worldmodels import rollout

from simgan.models import ConditionalGAN, ModelConfig
from simgan.sim_env import SimEnv
from simgan.sim_vector_env import SimVectorEnv

SMALL = ModelConfig(noise_dim=4, mean_hidden=(32, 32), residual_hidden=(16,), disc_hidden=(16,))


def _gan(env_id: str) -> ConditionalGAN:
    """A freshly initialised GAN on a real env's spaces whose episodes stay in the data and do not end early
    (an untrained termination head says "done" at random; a probability near the cut could fall either way
    under float rounding, and the test compares trajectories, not the head)."""
    info = load_script("bench_sim").model_info_from_env(env_id, rollout_steps=500)
    torch.manual_seed(0)
    model = ConditionalGAN(info, SMALL)
    with torch.no_grad():
        model.normalizer.delta_std.fill_(0.01)
        model.generator.termination_net[-1].bias[0] = -20.0
        model.realism_reference = torch.sort(torch.randn(256)).values
    return model.eval()


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_compiled_vector_env_follows_the_eager_one(env_id):
    model = _gan(env_id)
    kwargs = {"num_envs": 8, "max_episode_steps": 5, "device": "cpu", "seed": 0}  # 5: autoresets inside
    eager, compiled = SimVectorEnv(model, **kwargs), SimVectorEnv(model, compile=True, **kwargs)
    assert compiled.sim.compiled and not eager.sim.compiled
    eager.action_space.seed(1)
    actions = [eager.action_space.sample() for _ in range(12)]
    steps = 0
    compiled_run = rollout(compiled, actions, seed=3)
    for a, b in zip(rollout(eager, actions, seed=3), compiled_run):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)  # observations
        if len(a) == 5:
            steps += 1
            np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)  # rewards
            for k in (2, 3):  # terminated, truncated: the same episodes end at the same steps
                np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_allclose(a[4]["realism"], b[4]["realism"], rtol=1e-4, atol=1e-5)
            for key in ("out_of_support", "non_finite", "_realism"):
                np.testing.assert_array_equal(a[4][key], b[4][key])
    assert steps == 12 and eager.stats == compiled.stats and compiled.stats["steps"] > 0
    truncated_rows = sum(b[3].sum() for b in compiled_run[1:])
    assert truncated_rows == 2 * 8  # steps 5 and 11 end every sub-env's episode (6 is an autoreset step)


def test_compiled_env_is_seeded_bit_for_bit_and_takes_noise_options():
    model = _gan("Pendulum-v1")
    actions = [np.full((4, 1), 0.5 * np.sin(t), dtype=np.float32) for t in range(6)]
    runs = []
    for _ in range(2):
        envs = SimVectorEnv(model, num_envs=4, device="cpu", torch_mode=True, compile=True)
        obs, _ = envs.reset(seed=7, options={"noise": [1, 2, 3, 4]})  # per-row noise streams, drawn eagerly
        runs.append([obs] + [envs.step(torch.as_tensor(a))[0] for a in actions])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][1][0], runs[0][1][1])  # the rows' own noise streams differ


def test_compiled_single_env_follows_the_eager_one():
    model = _gan("Pendulum-v1")
    actions = [np.array([np.cos(t)], dtype=np.float32) for t in range(8)]
    results = []
    for compile_ in (False, True):
        env = SimEnv(model, device="cpu", compile=compile_)
        results.append(np.stack([step[0] for step in rollout(env, actions, seed=11)]))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(results[0][0], results[0][-1])  # the state moved


def test_compiled_env_holds_the_weights_it_was_built_with_and_refuses_changed_ones():
    """The weights are frozen into the compiled step (constants, packed for oneDNN on the CPU): a change made in
    place or by replacing a parameter is refused at the next step; a new env steps on the changed model."""
    model = _gan("Pendulum-v1")
    actions = [np.array([0.7], dtype=np.float32)] * 3
    before = np.stack([s[0] for s in rollout(SimEnv(model, device="cpu", compile=True), actions, seed=5)])
    first = model.generator.mean_net[0]
    for change in ("in place", "replaced"):
        env = SimEnv(model, device="cpu", compile=True)
        env.reset(seed=5)
        env.step(actions[0])
        with torch.no_grad():
            if change == "in place":
                first.bias.add_(0.5)
            else:
                first.weight = torch.nn.Parameter(first.weight * 1.5)
        with pytest.raises(
            RuntimeError, match=r"expected the model's weights as they were when this env was built"
        ):
            env.step(actions[0])
        # a new env sees the change, as an eager env does
        runs = [
            np.stack([s[0] for s in rollout(SimEnv(model, device="cpu", compile=c), actions, seed=5)])
            for c in (False, True)
        ]
        np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-5)
        assert not np.allclose(runs[1][1:], before[1:], atol=1e-4)  # and the change moved the trajectory
        before = runs[1]
    assert torch._inductor.config.freezing is False  # set for the compiled call only


def test_compile_must_be_a_bool():
    model = _gan("Pendulum-v1")
    with pytest.raises(ValueError, match=r"compile: expected a bool, got 'yes'"):
        SimVectorEnv(model, num_envs=2, device="cpu", compile="yes")


def test_a_compiled_gaussian_ensemble_env_follows_the_eager_one():
    """The other model kind: its members' forward pass (scratch buffers eagerly) traces too."""
    from worldmodels import linear_info

    from simgan.ensemble import EnsembleConfig, GaussianEnsemble

    model = GaussianEnsemble(linear_info(), EnsembleConfig(members=3, elites=2, hidden=(16,), progress=False))
    model.reset_parameters(torch.Generator().manual_seed(0))
    model.realism_reference = torch.sort(torch.randn(64)).values
    actions = [np.full((6, 2), 0.3 * np.cos(t), dtype=np.float32) for t in range(5)]
    runs = []
    for compile_ in (False, True):
        envs = SimVectorEnv(model, num_envs=6, device="cpu", compile=compile_)
        runs.append(rollout(envs, actions, seed=3))
    for a, b in zip(*runs):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
        if len(a) == 5:
            np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a[4]["realism"], b[4]["realism"], rtol=1e-4, atol=1e-5)
