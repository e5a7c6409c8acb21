"""Policy protocol, action plumbing, random policy, agent directories (save/load, tampering, space checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents import AgentLoadError, Policy, RandomPolicy, SpaceMismatchError, load_agent
from agents.base import finalize_actions, obs_to_tensor
from agents.serialization import AGENT_JSON, WEIGHTS_FILE, space_from_dict, space_to_dict, spaces_match

PENDULUM_OBS = gym.spaces.Box(np.array([-1, -1, -8], np.float32), np.array([1, 1, 8], np.float32))
PENDULUM_ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
CARTPOLE_OBS = gym.make("CartPole-v1").observation_space


@pytest.mark.parametrize(
    "space",
    [PENDULUM_OBS, CARTPOLE_OBS, gym.spaces.Discrete(3, start=-1), gym.spaces.Box(0, 1, (2,), np.float64)],
)
def test_space_json_round_trip(space):
    spec = json.loads(json.dumps(space_to_dict(space)))  # through real JSON (infinite bounds included)
    assert spaces_match(space_from_dict(spec), space)


def test_unsupported_space_is_refused():
    with pytest.raises(ValueError, match="expected a Box or Discrete space, got MultiDiscrete"):
        space_to_dict(gym.spaces.MultiDiscrete([2, 3]))


def test_finalize_actions_clips_and_casts():
    box = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 5.0], np.float32))
    out = finalize_actions(np.array([[3.0, -2.0], [0.5, 9.0]]), box)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1.0, 0.0], [0.5, 5.0]])
    discrete = finalize_actions(np.array([0.0, 4.0, 1.0]), gym.spaces.Discrete(3))
    assert discrete.dtype == np.int64
    np.testing.assert_array_equal(discrete, [0, 2, 1])


def test_obs_to_tensor_batches_and_rejects_bad_shapes():
    single, batched = obs_to_tensor(np.zeros(3), PENDULUM_OBS, torch.device("cpu"))
    assert single.shape == (1, 3) and not batched
    batch, batched = obs_to_tensor(torch.zeros(5, 3), PENDULUM_OBS, torch.device("cpu"))
    assert batch.shape == (5, 3) and batched
    with pytest.raises(ValueError, match=r"expected shape \(3,\) or \(B, \*\(3,\)\), got \(4,\)"):
        obs_to_tensor(np.zeros(4), PENDULUM_OBS, torch.device("cpu"))


@pytest.mark.parametrize("action_space", [PENDULUM_ACT, gym.spaces.Discrete(4, start=1)])
def test_random_policy_is_seeded_valid_and_batched(action_space):
    a = RandomPolicy(PENDULUM_OBS, action_space, seed=7)
    b = RandomPolicy(PENDULUM_OBS, action_space, seed=7)
    batch = a.act(np.zeros((64, 3)))
    np.testing.assert_array_equal(batch, b(np.zeros((64, 3))))  # __call__ == act, same seed -> same actions
    assert len(batch) == 64 and all(action_space.contains(x) for x in batch)
    single = a.act(np.zeros(3))
    assert action_space.contains(single)
    if isinstance(action_space, gym.spaces.Discrete):
        assert batch.dtype == np.int64 and single.shape == ()
    else:
        assert single.shape == (1,)
    assert isinstance(a, Policy)


def test_random_policy_save_load(tmp_path):
    RandomPolicy(PENDULUM_OBS, PENDULUM_ACT, seed=3).save(tmp_path / "rnd")
    loaded = load_agent(tmp_path / "rnd", observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT)
    np.testing.assert_array_equal(
        loaded.act(np.zeros((4, 3))), RandomPolicy(PENDULUM_OBS, PENDULUM_ACT, 3).act(np.zeros((4, 3)))
    )


@pytest.fixture
def saved_agent(tmp_path):
    from agents import SACAgent, SACConfig

    agent = SACAgent(PENDULUM_OBS, PENDULUM_ACT, SACConfig(hidden_size=8))
    agent.save(tmp_path / "sac")
    return tmp_path / "sac"


def test_space_mismatch_has_a_clear_message(saved_agent):
    with pytest.raises(
        SpaceMismatchError, match=r"agent was trained for observation space Box\(.*\(3,\).*got Box\(.*\(4,\)"
    ):
        load_agent(saved_agent, observation_space=CARTPOLE_OBS)
    with pytest.raises(SpaceMismatchError, match=r"agent was trained for action space .* got Discrete"):
        load_agent(saved_agent, action_space=gym.spaces.Discrete(2))


def test_missing_directory_and_files(tmp_path, saved_agent):
    with pytest.raises(AgentLoadError, match=r"expected an agent directory with agent\.json"):
        load_agent(tmp_path / "nowhere")
    (saved_agent / WEIGHTS_FILE).unlink()
    with pytest.raises(AgentLoadError, match=r"expected weights file 'weights\.safetensors'.*missing"):
        load_agent(saved_agent)


def test_tampered_weights_are_refused(saved_agent):
    data = bytearray((saved_agent / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (saved_agent / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(AgentLoadError, match=r"expected sha256 .* got .*modified or truncated"):
        load_agent(saved_agent)


class _Exploit:
    """Unpickling this would run ``open(marker, "w")``: proof that a loader executed pickled code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_in_place_of_weights_is_never_executed(tmp_path, saved_agent):
    import hashlib
    import pickle

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)))
    (saved_agent / WEIGHTS_FILE).write_bytes(payload)
    spec = json.loads((saved_agent / AGENT_JSON).read_text())
    spec["weights"]["sha256"] = hashlib.sha256(payload).hexdigest()  # a consistent, but malicious, directory
    (saved_agent / AGENT_JSON).write_text(json.dumps(spec))
    with pytest.raises(AgentLoadError, match="not a valid safetensors file"):
        load_agent(saved_agent)
    assert not marker.exists()


def test_corrupt_or_unknown_agent_json(saved_agent):
    spec = json.loads((saved_agent / AGENT_JSON).read_text())
    (saved_agent / AGENT_JSON).write_text(json.dumps({**spec, "algo": "dqn"}))
    with pytest.raises(AgentLoadError, match=r"expected algo in \['ppo', 'random', 'sac'\], got 'dqn'"):
        load_agent(saved_agent)
    (saved_agent / AGENT_JSON).write_text(json.dumps({**spec, "format_version": 99}))
    with pytest.raises(AgentLoadError, match="expected format_version 1, got 99"):
        load_agent(saved_agent)
    (saved_agent / AGENT_JSON).write_text('{"algo": "sac", ')
    with pytest.raises(AgentLoadError, match="expected valid JSON"):
        load_agent(saved_agent)


def test_weights_that_do_not_fit_are_refused(tmp_path, saved_agent):
    from agents import SACAgent, SACConfig

    # A valid directory whose config claims a different network width than its weights hold.
    spec = json.loads((saved_agent / AGENT_JSON).read_text())
    spec["config"]["hidden_size"] = 16
    (saved_agent / AGENT_JSON).write_text(json.dumps(spec))
    with pytest.raises(AgentLoadError, match="weights do not fit a sac agent"):
        load_agent(saved_agent)
    assert SACAgent(PENDULUM_OBS, PENDULUM_ACT, SACConfig(hidden_size=8)) is not None


def test_agents_import_neither_simgan_nor_envs():
    code = "import sys, agents, agents.mpc, agents.evaluate; print(sorted(m for m in sys.modules if m.split('.')[0] in ('simgan', 'envs')))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
