"""SimVectorEnv on hand-computable WorldModels: autoreset, partial resets, branching, batched == single, torch mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from worldmodels import DiscreteLinearModel, LinearModel, PoisonedModel

from simgan.sim_env import SimEnv
from simgan.sim_vector_env import SimVectorEnv

ZERO = np.zeros((4, 2), dtype=np.float32)


def test_is_a_vector_env_with_batched_spaces_and_next_step_autoreset():
    envs = SimVectorEnv(LinearModel(), num_envs=4)
    assert isinstance(envs, gym.vector.VectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.observation_space.shape == (4, 3) and envs.action_space.shape == (4, 2)
    assert envs.single_action_space == LinearModel().info.action_space


def test_make_vec_with_the_vector_entry_point():
    envs = gym.make_vec(
        "simgan/Sim-v0", num_envs=3, vectorization_mode="vector_entry_point", model=LinearModel(), seed=0
    )
    assert isinstance(envs, SimVectorEnv) and envs.num_envs == 3
    obs, _ = envs.reset()
    assert obs.shape == (3, 3)


def test_next_step_autoreset_semantics():
    model = LinearModel()
    envs = SimVectorEnv(model, num_envs=4, max_episode_steps=3, seed=0)
    envs.reset()
    for t in range(3):
        obs, rewards, terminations, truncations, infos = envs.step(ZERO)
        assert not terminations.any() and truncations.all() == (t == 2)
        assert infos["_realism"].all()
    # The step after the truncation ignores the action and returns new start states with reward 0.
    obs, rewards, terminations, truncations, infos = envs.step(np.ones((4, 2), dtype=np.float32))
    assert {tuple(row) for row in obs} <= {tuple(row) for row in model.info.initial_states}
    assert (rewards == 0).all() and not terminations.any() and not truncations.any()
    assert not infos["_realism"].any()
    # ... and the new episodes run their full length again.
    truncs = [envs.step(ZERO)[3].all() for _ in range(3)]
    assert truncs == [False, False, True]
    assert envs.stats["steps"] == 6 * 4  # autoreset steps are not transitions


def test_the_engine_refuses_start_states_without_the_rows_they_are_for():
    """BatchSimulator.step(draw_fresh=...) needs `active`; without it the fresh states were silently dropped."""
    envs = SimVectorEnv(LinearModel(), num_envs=2, seed=0)
    envs.reset(seed=0)
    before = envs.sim.obs.clone()
    action = torch.zeros(2, *envs.single_action_space.shape)
    with pytest.raises(ValueError, match=r"draw_fresh: expected `active` .* got None"):
        envs.sim.step(action, None, lambda: torch.zeros_like(before))
    assert torch.equal(envs.sim.obs, before)  # nothing stepped


def test_reset_mask_resets_only_the_masked_sub_envs_and_state_broadcasts():
    envs = SimVectorEnv(LinearModel(), num_envs=4, seed=0)
    envs.reset()
    before, *_ = envs.step(ZERO)
    state = np.array([1.0, -1.0, 0.5], dtype=np.float32)
    mask = np.array([True, False, True, False])
    obs, _ = envs.reset(options={"reset_mask": mask, "state": state})
    np.testing.assert_array_equal(obs[mask], np.stack([state, state]))
    np.testing.assert_array_equal(obs[~mask], before[~mask])
    states = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    obs, _ = envs.reset(options={"state": states})
    np.testing.assert_array_equal(obs, states)
    with pytest.raises(ValueError, match=r"expected state of shape \(3,\) or \(4, 3\), got \(2, 3\)"):
        envs.reset(options={"state": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.ones(3, dtype=bool)})
    with pytest.raises(gym.error.ResetNeeded):
        SimVectorEnv(LinearModel(), num_envs=4).reset(options={"reset_mask": mask})


def test_branching_one_state_into_reproducible_futures():
    n = 8
    envs = SimVectorEnv(LinearModel(), num_envs=n)
    state = np.array([0.2, -0.1, 0.0], dtype=np.float32)
    actions = np.tile(np.array([0.3, 0.3], dtype=np.float32), (n, 1))

    def futures(seeds):
        envs.reset(options={"state": state, "noise": seeds})
        return np.stack([envs.step(actions)[0] for _ in range(6)], axis=1)  # n x 6 x obs_dim

    first = futures(list(range(100, 100 + n)))
    np.testing.assert_array_equal(first, futures(list(range(100, 100 + n))))
    assert len({row.tobytes() for row in first}) == n  # all futures differ
    np.testing.assert_array_equal(first, futures(100))  # an int seed s gives sub-env k the seed s + k


def test_batched_equals_single_given_the_same_noise():
    n, steps = 5, 8
    rng = np.random.default_rng(1)
    states = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (steps, n, 2)).astype(np.float32)
    seeds = [11, 22, 33, 44, 55]
    envs = SimVectorEnv(LinearModel(), num_envs=n, max_episode_steps=100)
    obs, _ = envs.reset(options={"state": states, "noise": seeds})
    batched = [envs.step(actions[t]) for t in range(steps)]
    for i in range(n):
        env = SimEnv(LinearModel(), max_episode_steps=100)
        env.reset(options={"state": states[i], "noise": seeds[i]})
        for t in range(steps):
            obs, reward, terminated, truncated, info = env.step(actions[t, i])
            np.testing.assert_array_equal(obs, batched[t][0][i])
            assert (
                reward == batched[t][1][i]
                and terminated == batched[t][2][i]
                and truncated == batched[t][3][i]
            )
            assert info["realism"] == batched[t][4]["realism"][i]


def test_fixed_noise_array_per_sub_env():
    envs = SimVectorEnv(LinearModel(), num_envs=2)
    noise = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=np.float32)
    envs.reset(options={"state": np.zeros(3), "noise": noise})
    obs = [envs.step(np.zeros((2, 2), dtype=np.float32))[0] for _ in range(2)]
    np.testing.assert_allclose(obs[1], 2 * 0.01 * noise, atol=1e-7)


def test_seeded_reset_is_reproducible_and_seed_dependent():
    def trajectory(seed):
        envs = SimVectorEnv(LinearModel(), num_envs=6, max_episode_steps=4)
        out = [envs.reset(seed=seed)[0]]
        return np.stack(out + [envs.step(np.full((6, 2), 0.5, dtype=np.float32))[0] for _ in range(10)])

    np.testing.assert_array_equal(trajectory(3), trajectory(3))
    assert not np.array_equal(trajectory(3), trajectory(4))


def test_non_finite_sub_envs_are_truncated_and_the_rest_continue():
    envs = SimVectorEnv(PoisonedModel("nan_obs", poison_above=0.5), num_envs=3)
    states = np.array([[0, 0, 0.9], [0, 0, 0.1], [0, 0, 0.7]], dtype=np.float32)
    envs.reset(options={"state": states})
    obs, rewards, _terminations, truncations, infos = envs.step(np.zeros((3, 2), dtype=np.float32))
    assert np.isfinite(obs).all() and np.isfinite(rewards).all()
    np.testing.assert_array_equal(truncations, [True, False, True])
    np.testing.assert_array_equal(infos["non_finite"], [True, False, True])
    np.testing.assert_array_equal(obs[[0, 2]], states[[0, 2]])
    assert envs.stats["non_finite"] == 2


def test_halt_unknown_terminates_only_the_sub_envs_that_leave_support():
    # support is [-2.4, 2.4] per dimension (tests/worldmodels.py); sub-env 1 steps to 2.45
    states = np.array([[0, 0, 0], [0, 2.35, 0], [0, 1.0, 0]], dtype=np.float32)
    action = np.array([[0, 0], [0, 1], [0, 0]], dtype=np.float32)
    ends = {}
    for halt in (False, True):
        envs = SimVectorEnv(LinearModel(), num_envs=3, halt_unknown=halt)
        envs.reset(options={"state": states, "noise": np.zeros(3)})
        obs, rewards, terminations, truncations, infos = envs.step(action)
        np.testing.assert_array_equal(infos["out_of_support"], [False, True, False])
        ends[halt] = (obs, rewards, terminations, truncations)
    np.testing.assert_array_equal(ends[False][2], [False, False, False])
    np.testing.assert_array_equal(ends[False][3], [False, True, False])
    np.testing.assert_array_equal(ends[True][2], [False, True, False])
    np.testing.assert_array_equal(ends[True][3], [False, False, False])
    np.testing.assert_array_equal(ends[True][0], ends[False][0])  # only how the episode ends differs
    np.testing.assert_array_equal(ends[True][1], ends[False][1])


def test_bad_actions_raise_value_error():
    envs = SimVectorEnv(LinearModel(), num_envs=4, seed=0)
    with pytest.raises(gym.error.ResetNeeded):
        envs.step(ZERO)
    envs.reset()
    bad = ZERO.copy()
    bad[2, 1] = np.nan
    for actions, match in [
        (np.zeros((4, 3), dtype=np.float32), r"expected shape \(4, 2\), got \(4, 3\)"),
        (bad, "expected finite values"),
        (np.full((4, 2), 1.5, dtype=np.float32), r"expected values in \[low, high\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            envs.step(actions)


def test_discrete_vector_env():
    envs = SimVectorEnv(DiscreteLinearModel(), num_envs=3, seed=0)
    envs.reset(options={"state": np.zeros(2), "noise": np.zeros(2)})
    obs, *_ = envs.step(np.array([0, 1, 2]))
    np.testing.assert_allclose(obs[:, 0], [-0.1, 0.0, 0.1], atol=1e-7)
    with pytest.raises(ValueError, match="integer"):
        envs.step(np.array([0.0, 1.0, 2.0]))


# ---- torch mode -----------------------------------------------------------------------------------------------
def test_torch_mode_matches_numpy_mode():
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 4, 2)).astype(np.float32)
    numpy_envs = SimVectorEnv(LinearModel(), num_envs=4, max_episode_steps=3)
    torch_envs = SimVectorEnv(LinearModel(), num_envs=4, max_episode_steps=3, torch_mode=True)
    obs_n, _ = numpy_envs.reset(seed=9)
    obs_t, _ = torch_envs.reset(seed=9)
    assert isinstance(obs_t, torch.Tensor) and obs_t.device == torch_envs.device
    np.testing.assert_array_equal(obs_n, obs_t.numpy())
    for t in range(6):
        out_n = numpy_envs.step(actions[t])
        out_t = torch_envs.step(torch.as_tensor(actions[t]))
        for a, b in zip(out_n[:4], out_t[:4]):
            assert isinstance(b, torch.Tensor)
            np.testing.assert_array_equal(a, b.numpy())
        np.testing.assert_array_equal(out_n[4]["realism"], out_t[4]["realism"].numpy())


def test_torch_mode_step_makes_no_host_round_trip(monkeypatch):
    envs = SimVectorEnv(
        LinearModel(), num_envs=4, torch_mode=True, validate_actions=False, max_episode_steps=2
    )
    envs.reset(seed=0)
    envs.reset(options={"reset_mask": np.array([True, False, True, False]), "noise": [1, 2]})

    def forbidden(*args, **kwargs):
        raise AssertionError("host round trip in the torch-mode step path")

    for name in ("cpu", "item", "numpy", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    actions = torch.zeros(4, 2)
    for _ in range(5):  # crosses an autoreset
        obs, rewards, _terminations, truncations, _infos = envs.step(actions)
    monkeypatch.undo()
    assert obs.shape == (4, 3) and rewards.dtype == torch.float32 and truncations.dtype == torch.bool


def test_torch_mode_without_validation_clips_and_flags_bad_actions():
    envs = SimVectorEnv(LinearModel(), num_envs=2, torch_mode=True, validate_actions=False)
    envs.reset(options={"state": torch.zeros(3), "noise": np.zeros(3)})
    obs, _, _, truncations, infos = envs.step(torch.tensor([[5.0, 0.0], [float("nan"), 0.0]]))
    torch.testing.assert_close(obs[0], torch.tensor([0.1, 0.0, 0.0]))  # clipped to the bound 1.0
    assert truncations.tolist() == [False, True] and infos["non_finite"].tolist() == [False, True]
    strict = SimVectorEnv(LinearModel(), num_envs=2, torch_mode=True)  # CPU: validated by default
    strict.reset(seed=0)
    with pytest.raises(ValueError, match="expected values in"):
        strict.step(torch.tensor([[5.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"expected shape \(2, 2\)"):
        strict.step(torch.zeros(2, 3))


# ---- wrappers --------------------------------------------------------------------------------------------------
def test_vector_wrappers_record_episode_statistics_and_normalize_observation():
    envs = SimVectorEnv(LinearModel(), num_envs=4, max_episode_steps=5, seed=0)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs = gym.wrappers.vector.NormalizeObservation(envs)
    envs.reset(seed=0)
    lengths = []
    for _ in range(12):
        obs, _, _, _, infos = envs.step(np.zeros((4, 2), dtype=np.float32))
        if "episode" in infos:
            lengths.extend(infos["episode"]["l"][infos["_episode"]].tolist())
    assert lengths == [5] * 8  # two full episodes per sub-env; autoreset steps are not counted
    assert np.isfinite(obs).all()


def test_runs_a_gaussian_ensemble_from_its_model_directory(tmp_path):
    """Both model kinds work: a tiny, freshly initialised GaussianEnsemble, saved and loaded by path."""
    from worldmodels import linear_info

    from simgan.ensemble import EnsembleConfig, GaussianEnsemble

    model = GaussianEnsemble(linear_info(), EnsembleConfig(members=2, elites=2, hidden=(8,), progress=False))
    model.reset_parameters(torch.Generator().manual_seed(0))
    model.realism_reference = torch.sort(torch.randn(64)).values
    model.save(tmp_path)
    envs = gym.make_vec("simgan/Sim-v0", num_envs=8, vectorization_mode="vector_entry_point", model=tmp_path)
    envs.reset(seed=0)
    for _ in range(5):
        obs, rewards, _, _, infos = envs.step(envs.action_space.sample())
        assert np.isfinite(obs).all() and np.isfinite(rewards).all()
        assert ((infos["realism"] >= 0) & (infos["realism"] <= 1)).all()
