"""envs.known: each known reward and termination equals the real env's, step for step; SimEnv's "known"."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from worldmodels import DiscreteLinearModel, discrete_info

from envs import make_env
from envs.known import KNOWN, UnknownFunctionsError, known_functions
from simgan.sim_env import SimEnv
from simgan.sim_vector_env import SimVectorEnv


def near_goal(env_id: str, rng: np.random.Generator) -> np.ndarray | None:
    """A physical state from which a random action often ends a classic-control episode (random play seldom
    gets there), so termination is checked both ways. None: reset normally."""
    if env_id == "MountainCar-v0":
        return np.array([rng.uniform(0.45, 0.5), rng.uniform(-0.01, 0.05)])
    if env_id == "MountainCarContinuous-v0":
        return np.array([rng.uniform(0.4, 0.45), rng.uniform(-0.01, 0.05)])
    if env_id == "Acrobot-v1":  # angles near tip-up (-cos t1 - cos(t1 + t2) close to 1 and above)
        return np.array(
            [rng.uniform(1.7, 2.4), rng.uniform(-0.6, 0.6), rng.normal(0, 0.3), rng.normal(0, 0.3)]
        )
    if env_id == "CartPole-v1":
        return np.array([rng.uniform(-2.5, 2.5), rng.normal(), rng.uniform(-0.22, 0.22), rng.normal()])
    return None


def real_transitions(env_id: str, steps: int = 600, seed: int = 0) -> dict[str, np.ndarray]:
    """Random play in the real env, every other episode started near its goal or edge."""
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "action", "next_obs", "reward", "terminated")}
    obs, _ = env.reset(seed=seed)
    episode = 0
    for _ in range(steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, next_obs, reward, terminated)):
            rows[key].append(value)
        obs = next_obs
        if terminated or truncated or rng.random() < 0.2:
            obs, _ = env.reset()
            episode += 1
            state = near_goal(env_id, rng) if episode % 2 else None
            if state is not None:
                env.unwrapped.state = state
                obs = np.array(env.unwrapped._get_ob() if env_id == "Acrobot-v1" else state, dtype=np.float32)
    env.close()
    return {key: np.asarray(value) for key, value in rows.items()}


@pytest.mark.filterwarnings("ignore:.*InvertedPendulum-v4 is out of date")
@pytest.mark.parametrize("env_id", sorted(KNOWN))
def test_known_reward_and_termination_equal_the_real_envs(env_id):
    data = real_transitions(env_id)
    functions = known_functions(env_id)
    obs, next_obs = torch.as_tensor(data["obs"]), torch.as_tensor(data["next_obs"])
    action = torch.as_tensor(data["action"])
    reward = functions.reward(obs.float(), action, next_obs.float())
    terminated = functions.termination(obs.float(), action, next_obs.float())
    assert reward.shape == terminated.shape == (len(data["reward"]),)
    assert terminated.dtype == torch.bool
    # both ways: a function that always says "not terminated" (or always the same reward) fails here
    never_ends = ("Pendulum-v1", "simgan/KickedPendulum-v0")
    assert 0 < data["terminated"].sum() < len(data["terminated"]) or env_id in never_ends
    np.testing.assert_array_equal(terminated.numpy(), data["terminated"])
    np.testing.assert_allclose(reward.numpy(), data["reward"], rtol=1e-4, atol=1e-4)


def test_unknown_ids_and_kwargs_that_change_the_task_are_refused():
    with pytest.raises(UnknownFunctionsError, match=r"expected one of the env ids .* got 'HalfCheetah-v5'"):
        known_functions("HalfCheetah-v5")
    with pytest.raises(
        UnknownFunctionsError, match=r"CartPole-v1: expected env kwargs .* got \['sutton_barto"
    ):
        known_functions("CartPole-v1", {"sutton_barto_reward": True})
    assert known_functions("Pendulum-v1", {"g": 9.0}) is KNOWN["Pendulum-v1"]  # gravity: same reward


def mountain_car_model(env_kwargs=None) -> DiscreteLinearModel:
    """DiscreteLinearModel (x += 0.1 (a - 1), learned reward -|x|, learned termination |x| > 2) labelled as
    MountainCar-v0, whose spaces have the same shapes."""
    info = dataclasses.replace(discrete_info(), env_id="MountainCar-v0", env_kwargs=dict(env_kwargs or {}))
    return DiscreteLinearModel(info)


def test_sim_env_takes_the_known_reward_and_termination_of_its_source_env():
    start = {"state": np.array([0.45, 0.01], dtype=np.float32), "noise": np.zeros(2, dtype=np.float32)}
    learned = SimEnv(mountain_car_model())
    learned.reset(options=start)
    _, reward, terminated, _, _ = learned.step(np.int64(2))  # x: 0.45 -> 0.55, velocity 0.01
    assert reward == pytest.approx(-0.55) and not terminated  # the model's: -|x|, |x| > 2
    known = gym.make("simgan/Sim-v0", model=mountain_car_model(), reward_fn="known", termination_fn="known")
    known.reset(options=start)
    _, reward, terminated, _, _ = known.step(np.int64(2))
    assert reward == -1.0 and terminated  # MountainCar's: -1 a step, x >= 0.5 with velocity >= 0
    vector = SimVectorEnv(mountain_car_model(), num_envs=3, termination_fn="known", seed=0)
    # velocities 5 noise sigmas (0.01) either side of MountainCar's goal condition
    states = np.array([[0.45, 0.05], [0.45, -0.05], [0.0, 0.0]], dtype=np.float32)
    vector.reset(options={"state": states})
    _, reward, terminated, _, _ = vector.step(np.array([2, 2, 2]))
    assert terminated.tolist() == [True, False, False]  # reward stays the learned one
    np.testing.assert_allclose(reward, -np.abs([0.55, 0.55, 0.1]), atol=0.05)


def test_sim_env_refuses_known_functions_it_cannot_have():
    with pytest.raises(UnknownFunctionsError, match="got 'simgan-test/DiscreteLinear-v0'"):
        SimEnv(DiscreteLinearModel(), reward_fn="known")
    with pytest.raises(UnknownFunctionsError, match=r"got \['goal_velocity'\]"):
        SimEnv(mountain_car_model({"goal_velocity": 0.1}), termination_fn="known")
    with pytest.raises(ValueError, match="reward_fn: expected None, a callable or 'known', got 'learned'"):
        SimEnv(mountain_car_model(), reward_fn="learned")


def test_simulate_runs_with_the_known_reward_or_in_bfloat16_and_says_so(tmp_path, capsys):
    """`simgan simulate --known-reward` on a tiny Pendulum GAN: the same episodes, paid Pendulum's own reward;
    `--precision bfloat16`: the model in bfloat16; `--compile`: the step compiled."""
    from tiny_configs import TINY_GAN

    import simgan
    from simgan.cli import main

    data = simgan.collect("Pendulum-v1", steps=400, workers=0, out=tmp_path / "data", seed=0, progress=False)
    simgan.train(data, tmp_path / "gan", TINY_GAN, progress=False)

    def simulate(*flags: str) -> list[str]:
        assert (
            main(["simulate", "--model", str(tmp_path / "gan"), "--num-envs", "8", "--steps", "200", *flags])
            == 0
        )
        return capsys.readouterr().out.splitlines()

    learned, known = simulate(), simulate("--known-reward")
    assert "(known reward)" in known[0] and "known" not in learned[0]
    mean = {
        name: float(lines[2].split("return mean ")[1].split()[0])
        for name, lines in [("l", learned), ("k", known)]
    }
    assert learned[2].startswith("episodes      8 finished") and known[2].startswith(
        "episodes      8 finished"
    )
    assert mean["k"] != mean["l"] and -16.3 * 200 <= mean["k"] <= 0.0  # Pendulum pays in [-16.3, 0] a step
    # --precision bfloat16: the same env with the model's matmuls in bfloat16, and the line says so
    half = simulate("--precision", "bfloat16")
    assert "(bfloat16)" in half[0] and "(float32)" in learned[0]
    assert half[2].startswith("episodes      8 finished") and half[2] != learned[2]
    # --compile: the same episodes as the eager env (to float rounding), timed after the compiling step
    compiled = simulate("--compile")
    assert "(float32, compiled)" in compiled[0] and "which compiled" in compiled[1]
    compiled_mean = float(compiled[2].split("return mean ")[1].split()[0])
    assert compiled_mean == pytest.approx(mean["l"], rel=1e-4)
