"""SimEnv on hand-computable WorldModels (tests/worldmodels.py): exact transitions, seeding, flags, bad input."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from worldmodels import DiscreteLinearModel, LinearModel, PoisonedModel, linear_info, rollout

import simgan
from simgan.sim_env import SimEnv

ROOT = Path(__file__).resolve().parents[1]


# ---- gymnasium API -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_class", [LinearModel, DiscreteLinearModel])
def test_check_env_passes_with_warnings_as_errors(model_class):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # A directly built env has no spec, so there are no alternative render modes to try.
        check_env(SimEnv(model_class(), seed=0), skip_render_check=True)


def test_registered_id_passes_check_env_and_runs_under_passive_checker():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make("simgan/Sim-v0", model=LinearModel())
        check_env(env.unwrapped)  # with a spec: render modes and close are checked too
        obs, _ = env.reset(seed=3)  # through OrderEnforcing + PassiveEnvChecker
        for _ in range(25):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            assert obs in env.observation_space and np.isfinite(reward)
            if terminated or truncated:
                obs, _ = env.reset()
    assert isinstance(env.unwrapped, SimEnv) and env.spec.id == "simgan/Sim-v0"


def test_spaces_and_defaults_come_from_the_model():
    model = LinearModel()
    env = SimEnv(model)
    assert env.observation_space == model.info.observation_space
    assert env.action_space == model.info.action_space
    assert env.max_episode_steps == 20
    assert SimEnv(model, max_episode_steps=5).max_episode_steps == 5
    assert SimEnv(LinearModel(linear_info(max_episode_steps=None))).max_episode_steps is None


# ---- exact transitions --------------------------------------------------------------------------------------
def test_step_matches_the_hand_computed_transition():
    env = SimEnv(LinearModel())
    state = np.array([0.5, -0.25, 1.0], dtype=np.float32)
    noise = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    obs, info = env.reset(options={"state": state, "noise": noise})
    np.testing.assert_array_equal(obs, state)
    action = np.array([0.5, -1.0], dtype=np.float32)
    obs, reward, terminated, truncated, info = env.step(action)
    expected = state + 0.1 * np.array([0.5, -1.0, 0.0]) + 0.01 * noise
    np.testing.assert_allclose(obs, expected, rtol=1e-6)
    assert reward == pytest.approx(-float((expected**2).sum()), rel=1e-5)
    assert not terminated and not truncated
    # realism = exp(-mean(noise^2) / 2) for the linear model
    assert info["realism"] == pytest.approx(np.exp(-np.mean(noise**2) / 2), rel=1e-4)
    assert info == {**info, "unrealistic": False, "out_of_support": False, "non_finite": False}
    assert obs.dtype == np.float32 and isinstance(reward, float)


def test_discrete_actions_move_the_state_by_hand_computed_amounts():
    env = SimEnv(DiscreteLinearModel())
    start = np.array([0.0, 0.0], dtype=np.float32)
    for action, expected_x in [(0, -0.1), (1, 0.0), (2, 0.1)]:
        env.reset(options={"state": start, "noise": np.zeros(2, dtype=np.float32)})
        obs, reward, *_ = env.step(np.int64(action))
        assert obs[0] == pytest.approx(expected_x, abs=1e-7) and obs[1] == 0.0
        assert reward == pytest.approx(-abs(expected_x), abs=1e-7)


def test_learned_termination_and_custom_reward_and_termination_fns():
    env = SimEnv(LinearModel())
    env.reset(options={"state": np.array([1.95, 0, 0], dtype=np.float32), "noise": np.zeros(3)})
    *_, terminated, truncated, _ = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert terminated and not truncated  # |2.05| > 2

    def reward_fn(obs, action, next_obs):
        return next_obs[:, 0] * 10.0

    def termination_fn(obs, action, next_obs):
        return next_obs[:, 1] > 0.05

    env = SimEnv(LinearModel(), reward_fn=reward_fn, termination_fn=termination_fn)
    env.reset(options={"state": np.zeros(3, dtype=np.float32), "noise": np.zeros(3)})
    _, reward, terminated, _, _ = env.step(np.array([0.5, 1.0], dtype=np.float32))
    assert reward == pytest.approx(0.5) and terminated


def test_truncation_at_max_episode_steps():
    env = SimEnv(LinearModel(), max_episode_steps=4, seed=0)
    env.reset()
    truncations = [env.step(np.zeros(2, dtype=np.float32))[3] for _ in range(4)]
    assert truncations == [False, False, False, True]


# ---- seeding and noise ---------------------------------------------------------------------------------------
def test_same_seed_and_actions_give_the_same_trajectory_bit_for_bit():
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 2).astype(np.float32) for _ in range(15)]
    a = rollout(SimEnv(LinearModel()), actions, seed=42)
    b = rollout(SimEnv(LinearModel()), actions, seed=42)
    c = rollout(SimEnv(LinearModel()), actions, seed=43)
    for step_a, step_b in zip(a, b):
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1:] == step_b[1:]
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_constructor_seed_makes_the_first_reset_reproducible():
    obs_a, _ = SimEnv(LinearModel(), seed=7).reset()
    obs_b, _ = SimEnv(LinearModel(), seed=7).reset()
    np.testing.assert_array_equal(obs_a, obs_b)


def test_noise_seed_option_gives_reproducible_different_futures():
    env = SimEnv(LinearModel())
    state = np.zeros(3, dtype=np.float32)
    actions = [np.zeros(2, dtype=np.float32)] * 5

    def future(noise_seed):
        return np.stack([s[0] for s in rollout(env, actions, options={"state": state, "noise": noise_seed})])

    np.testing.assert_array_equal(future(1), future(1))
    assert not np.allclose(future(1), future(2))


def test_fixed_noise_mode_reuses_one_draw_every_step():
    env = SimEnv(LinearModel(), seed=0)
    obs, _ = env.reset(options={"noise": "fixed"})
    residuals = []
    for _ in range(5):
        next_obs, *_ = env.step(np.zeros(2, dtype=np.float32))
        residuals.append(next_obs - obs)  # = 0.01 * the fixed noise
        obs = next_obs
    np.testing.assert_allclose(residuals, np.repeat(residuals[:1], 5, axis=0), atol=1e-6)
    assert np.abs(residuals[0]).max() > 0


def test_initial_states_dataset_array_and_callable():
    model = LinearModel()
    starts = {tuple(SimEnv(model, seed=s).reset()[0]) for s in range(30)}
    assert starts <= {tuple(row) for row in model.info.initial_states} and len(starts) > 1
    table = np.array([[1.0, 1.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(SimEnv(model, initial_states=table).reset()[0], table[0])
    env = SimEnv(model, initial_states=lambda rng: rng.uniform(-1, 1, 3).astype(np.float32), seed=0)
    first, _ = env.reset(seed=5)
    np.testing.assert_array_equal(first, env.reset(seed=5)[0])


# ---- realism, support and non-finite values -----------------------------------------------------------------
def test_unrealistic_transitions_truncate_and_are_counted():
    env = SimEnv(LinearModel(), realism_threshold=0.01)
    env.reset(options={"state": np.zeros(3, dtype=np.float32), "noise": np.full(3, 4.0)})
    _, _, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["realism"] == pytest.approx(np.exp(-8.0), rel=1e-4)  # < 0.01
    assert truncated and not terminated and info["unrealistic"]
    env.reset(options={"state": np.zeros(3, dtype=np.float32), "noise": np.full(3, 0.5)})
    _, _, _, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert not truncated and not info["unrealistic"]
    assert env.stats == {"steps": 2, "unrealistic": 1, "out_of_support": 0, "non_finite": 0}


def test_out_of_support_states_truncate_and_are_counted():
    # data range [-2, 2] per dimension, margin 0.1 x 4 = 0.4: support is [-2.4, 2.4]
    env = SimEnv(LinearModel())
    env.reset(options={"state": np.array([0, 2.35, 0], dtype=np.float32), "noise": np.zeros(3)})
    obs, _, terminated, truncated, info = env.step(np.array([0, 1], dtype=np.float32))
    assert obs[1] == pytest.approx(2.45) and info["out_of_support"] and truncated and not terminated
    wide = SimEnv(LinearModel(), support_margin=0.5)
    wide.reset(options={"state": np.array([0, 2.35, 0], dtype=np.float32), "noise": np.zeros(3)})
    assert not wide.step(np.array([0, 1], dtype=np.float32))[4]["out_of_support"]
    assert env.get_stats()["out_of_support"] == 1


def test_row_checks_equal_the_bool_reductions_exactly():
    """The step's float-reduction row checks give isfinite(x).all(1) and ((x < low) | (x > high)).any(1) exactly,
    on NaN, +-inf, float32's largest values, -0.0, values on the bounds and just past them."""
    from simgan.sim_batch import rows_finite, rows_outside

    big = float(np.finfo(np.float32).max)
    low, high = torch.tensor([-1.0, -2.0, 0.0]), torch.tensor([1.0, 2.0, 0.0])
    special = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, big, -big, float("nan"), float("inf"), -float("inf"), 1e-45]
    special += [
        float(np.nextafter(np.float32(1), np.float32(2))),
        float(np.nextafter(np.float32(0), np.float32(1))),
    ]
    values = torch.tensor(special, dtype=torch.float32)
    rows = torch.cartesian_prod(values, values, values)  # every combination of them, 2,744 rows of 3
    rows = torch.cat([rows, torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(rows_finite(rows), torch.isfinite(rows).all(dim=1))
    assert torch.equal(rows_outside(rows, low, high), ((rows < low) | (rows > high)).any(dim=1))
    assert rows_finite(rows).any() and not rows_finite(rows).all()
    assert rows_outside(rows, low, high).any() and not rows_outside(rows, low, high).all()
    as64 = rows.double()  # any WorldModel's actions may come as float64
    assert torch.equal(rows_finite(as64), torch.isfinite(as64).all(dim=1))


def test_halt_unknown_ends_unknown_transitions_as_terminated():
    # the out-of-support step of the test above, and an unrealistic one, halted instead of truncated
    env = SimEnv(LinearModel(), halt_unknown=True, realism_threshold=0.01, max_episode_steps=2)
    env.reset(options={"state": np.array([0, 2.35, 0], dtype=np.float32), "noise": np.zeros(3)})
    _, _, terminated, truncated, info = env.step(np.array([0, 1], dtype=np.float32))
    assert info["out_of_support"] and terminated and not truncated
    env.reset(options={"state": np.zeros(3, dtype=np.float32), "noise": np.full(3, 4.0)})
    _, _, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["unrealistic"] and terminated and not truncated
    # known transitions are untouched: the time limit still truncates, the model's termination still ends
    env.reset(options={"state": np.zeros(3, dtype=np.float32), "noise": np.full(3, 0.5)})
    steps = [env.step(np.zeros(2, dtype=np.float32))[2:4] for _ in range(2)]
    assert steps == [(False, False), (False, True)]
    env.reset(options={"state": np.array([1.95, 0, 0], dtype=np.float32), "noise": np.zeros(3)})
    assert env.step(np.array([1.0, 0.0], dtype=np.float32))[2:4] == (True, False)  # |2.05| > 2
    # non-finite output stays a truncation (an error, not a state)
    poisoned = SimEnv(PoisonedModel("nan_obs", poison_above=0.5), halt_unknown=True)
    poisoned.reset(options={"state": np.array([0.1, 0.2, 0.9], dtype=np.float32)})
    assert poisoned.step(np.zeros(2, dtype=np.float32))[2:4] == (False, True)


@pytest.mark.parametrize("kind", ["nan_obs", "inf_obs", "nan_reward"])
def test_non_finite_model_output_never_reaches_the_agent(kind):
    env = SimEnv(PoisonedModel(kind, poison_above=0.5))
    state = np.array([0.1, 0.2, 0.9], dtype=np.float32)  # obs_2 > 0.5: the model emits NaN/inf
    env.reset(options={"state": state})
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert np.all(np.isfinite(obs)) and np.isfinite(reward)
    np.testing.assert_array_equal(obs, state)  # the last finite observation
    assert truncated and not terminated and info["non_finite"] and info["realism"] == 0.0
    assert env.stats["non_finite"] == 1


def test_a_custom_reward_does_not_hide_a_broken_model():
    env = SimEnv(PoisonedModel("nan_reward"), reward_fn=lambda obs, action, next_obs: next_obs[:, 0])
    env.reset(options={"state": np.array([0.1, 0.2, 0.9], dtype=np.float32)})
    _, reward, _, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert reward == 0.0 and truncated and info["non_finite"]


# ---- bad input -------------------------------------------------------------------------------------------------
def test_step_before_reset_raises_reset_needed():
    with pytest.raises(gym.error.ResetNeeded):
        SimEnv(LinearModel()).step(np.zeros(2, dtype=np.float32))


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.zeros(3, dtype=np.float32), r"expected shape \(2,\), got \(3,\)"),
        (np.zeros((1, 2), dtype=np.float32), r"expected shape \(2,\), got \(1, 2\)"),
        (np.array(["a", "b"]), "expected a float"),
        (np.array([True, False]), "expected a float"),
        (np.array([np.nan, 0.0], dtype=np.float32), "expected finite values"),
        (np.array([0.0, np.inf], dtype=np.float32), "expected finite values"),
        (np.array([0.0, 1.5], dtype=np.float32), r"expected values in \[low, high\].*got \[1.5\]"),
    ],
)
def test_bad_box_actions_raise_value_error(action, match):
    env = SimEnv(LinearModel(), seed=0)
    env.reset()
    with pytest.raises(ValueError, match=match):
        env.step(action)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (1.0, "expected an integer dtype"),
        (3, r"expected integers in \[0, 2\], got \[3\]"),
        ([1], "expected shape"),
    ],
)
def test_bad_discrete_actions_raise_value_error(action, match):
    env = SimEnv(DiscreteLinearModel(), seed=0)
    env.reset()
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_bad_reset_options_raise_value_error():
    env = SimEnv(LinearModel())
    with pytest.raises(ValueError, match=r"expected state of shape \(3,\), got \(2,\)"):
        env.reset(options={"state": np.zeros(2)})
    with pytest.raises(ValueError, match="expected finite values"):
        env.reset(options={"state": np.array([0.0, np.nan, 0.0])})
    with pytest.raises(ValueError, match="inside the observation space"):
        env.reset(options={"state": np.array([0.0, 11.0, 0.0])})
    with pytest.raises(ValueError, match=r"expected shape \(3,\) or \(1, 3\)"):
        env.reset(options={"noise": np.zeros(4)})
    with pytest.raises(ValueError, match="unknown"):
        env.reset(options={"stat": np.zeros(3)})


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="expected a WorldModel or a model directory path"):
        SimEnv(object())
    with pytest.raises(ValueError, match="realism_threshold"):
        SimEnv(LinearModel(), realism_threshold=1.5)
    with pytest.raises(ValueError, match="compute_realism"):
        SimEnv(LinearModel(), realism_threshold=0.1, compute_realism=False)
    with pytest.raises(ValueError, match=r"initial_states: expected an array of shape \(N, 3\)"):
        SimEnv(LinearModel(), initial_states=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="max_episode_steps"):
        SimEnv(LinearModel(), max_episode_steps=0)
    with pytest.raises(ValueError, match="halt_unknown: expected a bool, got 'yes'"):
        SimEnv(LinearModel(), halt_unknown="yes")


def test_bad_actions_raise_even_under_python_O():
    code = (
        "import numpy as np, pytest\n"
        "from simgan.sim_env import SimEnv\n"
        "import sys; sys.path.insert(0, 'tests')\n"
        "from worldmodels import LinearModel\n"
        "env = SimEnv(LinearModel(), seed=0); env.reset()\n"
        "for bad in ([np.nan, 0.0], [0.0, 5.0], [0.0]):\n"
        "    with pytest.raises(ValueError): env.step(np.array(bad, dtype=np.float32))\n"
        "with pytest.raises(ValueError): env.reset(options={'state': np.zeros(2)})\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-O", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# ---- wrappers ------------------------------------------------------------------------------------------------
def test_standard_wrappers_work():
    env = SimEnv(LinearModel(), max_episode_steps=50, seed=0)
    env = gym.wrappers.TimeLimit(env, max_episode_steps=7)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = gym.wrappers.NormalizeObservation(env)
    env = gym.wrappers.ClipAction(env)  # out-of-bounds actions are clipped before SimEnv sees them
    env.reset(seed=0)
    lengths = []
    for _ in range(20):
        _, _, terminated, truncated, info = env.step(np.array([3.0, -3.0], dtype=np.float32))
        if terminated or truncated:
            lengths.append(info["episode"]["l"])
            env.reset()
    assert lengths and all(length <= 7 for length in lengths)


def test_simgan_exports_the_envs():
    assert simgan.SimEnv is SimEnv
    assert simgan.SimVectorEnv.__name__ == "SimVectorEnv"


# ---- a real ConditionalGAN, saved and loaded through its model directory -------------------------------------
@pytest.fixture(scope="module")
def gan_dir(tmp_path_factory) -> Path:
    """A tiny, freshly initialised ConditionalGAN saved with save_model (throughput and API only, not fidelity)."""
    from simgan.checkpoint import save_model
    from simgan.models import ConditionalGAN, ModelConfig

    torch.manual_seed(0)
    info = linear_info()
    config = ModelConfig(noise_dim=4, mean_hidden=(16,), residual_hidden=(16,), disc_hidden=(16,))
    model = ConditionalGAN(info, config)
    with torch.no_grad():
        model.normalizer.delta_std.fill_(0.01)  # small steps: episodes stay inside the data range
        model.generator.termination_net[-1].bias[0] = -20.0  # an untrained termination head would say "done"
        model.realism_reference = torch.sort(torch.randn(256)).values
    directory = tmp_path_factory.mktemp("gan")
    save_model(
        directory, kind="gan", config={"model": config.to_json()}, info=info, tensors=model.state_tensors()
    )
    return directory


def test_gan_from_a_model_directory_passes_check_env(gan_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make("simgan/Sim-v0", model=str(gan_dir), device="cpu")
        check_env(env.unwrapped)
        env.reset(seed=0)
        for _ in range(5):
            obs, reward, _, _, info = env.step(env.action_space.sample())
            assert obs in env.observation_space and np.isfinite(reward) and 0.0 <= info["realism"] <= 1.0


@pytest.mark.parametrize("num_envs", [1, 4])
def test_agent_train_sim_passes_halt_unknown_to_the_learned_env(gan_dir, num_envs):
    import argparse

    from simgan.cli.agent import make_training_env

    for halt in (False, True):
        args = argparse.Namespace(env=None, sim=str(gan_dir), num_envs=num_envs, halt_unknown=halt)
        env = make_training_env(args, torch.device("cpu"))
        assert env.unwrapped.sim.halt_unknown is halt


def test_gan_env_is_seeded_bit_for_bit(gan_dir):
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 2).astype(np.float32) for _ in range(10)]
    a = rollout(SimEnv(gan_dir, device="cpu"), actions, seed=5)
    b = rollout(SimEnv(gan_dir, device="cpu"), actions, seed=5)
    for step_a, step_b in zip(a, b):
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1:] == step_b[1:]


def test_gan_vector_env_equals_single_envs_given_the_same_noise(gan_dir):
    from simgan.sim_vector_env import SimVectorEnv

    n, steps = 4, 6
    rng = np.random.default_rng(2)
    states = rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (steps, n, 2)).astype(np.float32)
    envs = gym.make_vec("simgan/Sim-v0", num_envs=n, vectorization_mode="vector_entry_point", model=gan_dir)
    assert isinstance(envs, SimVectorEnv)
    envs.reset(options={"state": states, "noise": [7, 8, 9, 10]})
    batched = [envs.step(actions[t]) for t in range(steps)]
    compared = 0
    for i in range(n):
        env = SimEnv(gan_dir)
        env.reset(options={"state": states[i], "noise": 7 + i})
        for t in range(steps):
            obs, reward, terminated, truncated, _ = env.step(actions[t, i])
            # Same noise, same weights; only the matmul batch size differs (BLAS may round differently).
            np.testing.assert_allclose(obs, batched[t][0][i], rtol=1e-5, atol=1e-6)
            assert reward == pytest.approx(float(batched[t][1][i]), rel=1e-4, abs=1e-5)
            assert (terminated, truncated) == (batched[t][2][i], batched[t][3][i])
            compared += 1
            if terminated or truncated:
                break  # the vector env autoresets this sub-env next step; the single env would need reset()
    assert compared == n * steps


def test_bfloat16_precision_is_close_to_float32_and_reproducible(gan_dir):
    rng = np.random.default_rng(3)
    actions = [rng.uniform(-1, 1, 2).astype(np.float32) for _ in range(5)]
    full = rollout(SimEnv(gan_dir, device="cpu"), actions, seed=1)
    half = rollout(SimEnv(gan_dir, device="cpu", precision="bfloat16"), actions, seed=1)
    again = rollout(SimEnv(gan_dir, device="cpu", precision="bfloat16"), actions, seed=1)
    for f, h, a in zip(full, half, again):
        assert h[0].dtype == np.float32
        np.testing.assert_array_equal(h[0], a[0])
        # steps are ~0.01 (delta_std), bfloat16 keeps ~3 significant digits of them
        np.testing.assert_allclose(h[0], f[0], atol=2e-3)
    with pytest.raises(ValueError, match="precision: expected one of"):
        SimEnv(LinearModel(), precision="float16")
