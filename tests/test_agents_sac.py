"""SAC: networks, the update on a fixed batch, target math, bounds, save/load, seeding, and learning Pendulum."""

from __future__ import annotations

import copy
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents import SACAgent, SACConfig, evaluate_policy, load_agent, train_sac
from agents.sac import SACOptimizers, sac_update, soft_update

# Asymmetric, non-unit bounds catch a scale/bias mistake in the squashed Gaussian.
OBS = gym.spaces.Box(-5.0, 5.0, (3,), np.float32)
ACT = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny networks: one thread is faster than two fighting over the shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(n, 3, generator=g),
        "actions": torch.rand(n, 2, generator=g) * torch.tensor([4.0, 5.0]) - torch.tensor([2.0, 0.0]),
        "rewards": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, 3, generator=g),
        "terminated": (torch.rand(n, generator=g) < 0.1).float(),
    }


def test_soft_update_is_polyak_averaging():
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    soft_update(target, source, tau=0.25)
    for old, new, src in zip(before, target.parameters(), source.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * src)


def test_actions_respect_asymmetric_bounds_and_batch_shapes():
    agent = SACAgent(OBS, ACT, SACConfig(hidden_size=16))
    with torch.no_grad():  # push the pre-tanh mean far out so squashing is what keeps actions in bounds
        agent.actor.mean.bias.fill_(50.0)
    obs = np.random.default_rng(0).uniform(-5, 5, (256, 3)).astype(np.float32)
    for deterministic in (False, True):
        actions = agent.act(obs, deterministic=deterministic)
        assert actions.shape == (256, 2) and actions.dtype == np.float32
        assert np.all(actions >= ACT.low) and np.all(actions <= ACT.high)
    assert agent.act(obs[0]).shape == (2,)
    np.testing.assert_allclose(agent.act(obs[:4], deterministic=True), np.tile(ACT.high, (4, 1)), atol=1e-5)


def test_log_prob_matches_change_of_variables():
    # For a 1-D squashed Gaussian: log pi(a) = log N(x) - log(scale * (1 - tanh(x)^2)).
    agent = SACAgent(gym.spaces.Box(-1, 1, (1,)), gym.spaces.Box(-3.0, 3.0, (1,)), SACConfig(hidden_size=8))
    obs = torch.zeros(1, 1)
    action, log_prob, _ = agent.actor.sample(obs, torch.Generator().manual_seed(0))
    mean, log_std = agent.actor(obs)
    x = torch.atanh(action / 3.0)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(x) - torch.log(
        3.0 * (1 - torch.tanh(x) ** 2)
    )
    torch.testing.assert_close(log_prob, expected.sum(1), atol=1e-4, rtol=1e-4)


def test_critic_loss_is_finite_and_decreases_on_a_fixed_batch():
    config = SACConfig(hidden_size=32, q_lr=1e-3, autotune=True, target_network_frequency=1)
    agent = SACAgent(OBS, ACT, config)
    opt = SACOptimizers.create(agent)
    batch, g = _batch(), torch.Generator().manual_seed(0)
    losses = [sac_update(agent, opt, batch, g) for _ in range(120)]
    q_losses = [entry["qf_loss"] for entry in losses]
    assert all(np.isfinite(v) for entry in losses for v in entry.values())
    assert np.mean(q_losses[-20:]) < 0.5 * np.mean(q_losses[:5])
    assert "actor_loss" in losses[1] and "alpha_loss" in losses[1]  # delayed actor: every 2nd update
    assert losses[-1]["alpha"] != config.alpha  # the temperature moved


def test_targets_track_critics_and_start_equal():
    agent = SACAgent(OBS, ACT, SACConfig(hidden_size=16, tau=0.5))
    for q, target in ((agent.qf1, agent.qf1_target), (agent.qf2, agent.qf2_target)):
        for p, tp in zip(q.parameters(), target.parameters()):
            torch.testing.assert_close(p, tp)
    opt = SACOptimizers.create(agent)
    before = copy.deepcopy(agent.qf1_target)
    sac_update(agent, opt, _batch(), torch.Generator().manual_seed(0))
    for old, new, src in zip(before.parameters(), agent.qf1_target.parameters(), agent.qf1.parameters()):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * src)


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    agent = SACAgent(OBS, ACT, SACConfig(hidden_size=16, seed=4))
    opt = SACOptimizers.create(agent)
    for _ in range(4):
        sac_update(agent, opt, _batch(), torch.Generator().manual_seed(1))
    agent.save(tmp_path / "sac", metadata={"note": "test"})
    loaded = load_agent(tmp_path / "sac", observation_space=OBS, action_space=ACT)
    assert isinstance(loaded, SACAgent) and loaded.config == agent.config
    obs = np.random.default_rng(1).normal(size=(32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    agent.generator.manual_seed(9)
    loaded.generator.manual_seed(9)
    np.testing.assert_array_equal(loaded.act(obs), agent.act(obs))  # same noise -> same sampled actions
    assert loaded.alpha == pytest.approx(agent.alpha)
    for name, tensor in agent.state_tensors().items():
        torch.testing.assert_close(loaded.state_tensors()[name], tensor)


def test_discrete_action_space_is_refused():
    with pytest.raises(ValueError, match="SAC: expected a 1-D Box action space, got Discrete"):
        SACAgent(OBS, gym.spaces.Discrete(3))


def test_same_seed_same_learning_curve():
    def run(seed: int):
        config = SACConfig(
            total_steps=200, learning_starts=100, batch_size=32, hidden_size=32, log_every=10, seed=seed
        )
        return train_sac(gym.make("Pendulum-v1"), config, progress=False)

    a, b, c = run(5), run(5), run(6)
    assert a.episode_returns == b.episode_returns and a.losses == b.losses
    assert a.losses != c.losses


def test_callback_runs_after_every_env_step_and_changes_nothing():
    """``callback(agent, env_steps)`` runs after every env step (and the updates it paid for); a callback that only
    acts deterministically leaves the run bit for bit the same."""
    config = SACConfig(
        total_steps=150, learning_starts=100, batch_size=32, hidden_size=16, log_every=5, seed=2
    )
    calls = []

    def look(agent, steps):
        calls.append((agent, steps))
        agent.act(np.zeros(3, np.float32), deterministic=True)

    plain = train_sac(gym.make("Pendulum-v1"), config, progress=False)
    watched = train_sac(gym.make("Pendulum-v1"), config, progress=False, callback=look)
    assert [steps for _, steps in calls] == list(range(1, 151))
    assert all(agent is watched.agent for agent, _ in calls)
    assert watched.losses == plain.losses


def test_tensorboard_logging(tmp_path):
    config = SACConfig(total_steps=220, learning_starts=180, batch_size=32, hidden_size=16, log_every=10)
    train_sac(gym.make("Pendulum-v1"), config, log_dir=tmp_path / "tb", progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert {"charts/episodic_return", "losses/qf_loss", "losses/actor_loss", "losses/alpha"} <= set(
        events.Tags()["scalars"]
    )
    assert any("hyperparameters" in tag for tag in events.Tags()["tensors"])


@pytest.mark.slow
def test_sac_learns_pendulum_in_4000_steps():
    """Measured on 2 shared cores: ~40 s; random policy scores about -1200, the trained one about -150 to -250."""
    start = time.perf_counter()
    env = gym.make("Pendulum-v1")
    before = evaluate_policy(SACAgent(env.observation_space, env.action_space), env, episodes=5, seed=100)
    result = train_sac(env, SACConfig(total_steps=4000, learning_starts=1000, seed=1), progress=False)
    after = evaluate_policy(result.agent, gym.make("Pendulum-v1"), episodes=10, seed=100)
    print(
        f"SAC Pendulum-v1 4000 steps: before {before.mean_return:.0f}, after {after}, {time.perf_counter() - start:.0f} s"
    )
    assert after.mean_return > -400
    assert after.mean_return > before.mean_return + 600


def test_progress_bar_ends_full_when_the_sub_envs_overshoot_total_steps(capsys) -> None:
    """8 sub-envs step together, so 100 requested transitions become 104: the bar ends at 104/104, 100 %,
    instead of dropping to a bare counter past its total."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1")] * 8)
    config = SACConfig(total_steps=100, learning_starts=50, batch_size=16, hidden_size=8, seed=0)
    train_sac(envs, config, progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "104/104" in last and "100%" in last, last
