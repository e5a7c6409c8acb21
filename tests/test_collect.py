"""Rollout collection: in-process workers, Ray workers, determinism, crashes, interruption and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from envs import make_env
from simgan.collection import (
    EPISODE_ID_STRIDE,
    CollectError,
    RolloutWorker,
    WorkerConfig,
    collect,
    describe_policy,
    split_budget,
)
from simgan.data import load_dataset, summarize
from simgan.dataset_format import MANIFEST_NAME, encode_shard
from simgan.fsutil import TMP_PREFIX
from simgan.spaces import UnsupportedSpaceError


def dir_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a directory by name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def check_episodes(ds) -> None:
    """Each episode ends exactly once, at its last transition, and steps count 0..L-1."""
    t = ds.transitions
    ends = t.terminated | t.truncated
    last = np.append(t.episode[1:] != t.episode[:-1], True)
    np.testing.assert_array_equal(ends, last)
    _, starts = np.unique(t.episode, return_index=True)
    np.testing.assert_array_equal(t.step[starts], 0)


# ---------------------------------------------------------------------------------------------------------------
# In-process (workers=0)
# ---------------------------------------------------------------------------------------------------------------


def test_split_budget() -> None:
    assert split_budget(10, 3) == [4, 3, 3]
    assert split_budget(10, 0) == [10]
    assert sum(split_budget(1001, 7)) == 1001


def test_pendulum_in_process_counts_and_budget_cut(tmp_path: Path) -> None:
    ds = collect(
        "Pendulum-v1", steps=1003, out=tmp_path / "ds", envs_per_worker=4, chunk_steps=300, progress=False
    )
    assert len(ds) == 1003 and ds.manifest["num_transitions"] == 1003
    check_episodes(ds)
    t = ds.transitions
    assert t.obs.dtype == np.float32 and t.action.dtype == np.float32 and t.action.shape == (1003, 1)
    # 4 envs in lockstep: envs 0-2 take 251 steps, env 3 takes 250; time limit 200 -> 4 full + 4 budget-cut
    np.testing.assert_array_equal(np.sort(ds.episode_lengths()), [50, 51, 51, 51, 200, 200, 200, 200])
    assert t.truncated.sum() == 8 and not t.terminated.any()
    assert ds.manifest["num_episodes"] == 8 and ds.manifest["max_episode_steps"] == 200
    # the summary says which truncations were the budget's cut, not the time limit
    summary = summarize(ds)
    assert "episodes     8 (0 terminated, 8 truncated, 4 of those short of the 200-step limit)" in summary
    assert {s["file"] for s in ds.manifest["shards"]} <= {f"shard-w000-c{i:05d}.npz" for i in range(4)}
    assert not list((tmp_path / "ds").glob(TMP_PREFIX + "*"))


def test_next_obs_is_true_final_observation_and_seeding_is_documented(tmp_path: Path) -> None:
    ds = collect("Pendulum-v1", steps=400, out=tmp_path / "ds", envs_per_worker=2, seed=5, progress=False)
    # episode 0 ran on sub-env 0 of worker 0, seeded from SeedSequence(seed + 0).spawn(K + 1)[0]
    first = ds.transitions.select(ds.transitions.episode == 0)
    env = make_env("Pendulum-v1")
    child = np.random.SeedSequence(5).spawn(3)[0]
    obs, _ = env.reset(seed=int(child.generate_state(1)[0]))
    np.testing.assert_array_equal(first.obs[0], obs.astype(np.float32))
    for action in first.action:
        obs, *_ = env.step(action)
    assert first.truncated[-1] and len(first) == 200
    np.testing.assert_array_equal(first.next_obs[-1], obs.astype(np.float32))  # not the autoreset observation


def test_cartpole_discrete_terminations(tmp_path: Path) -> None:
    ds = collect("CartPole-v1", steps=2000, out=tmp_path / "ds", seed=3, progress=False)
    assert len(ds) == 2000 and ds.is_discrete
    check_episodes(ds)
    t = ds.transitions
    assert t.action.dtype == np.int64 and t.action.shape == (2000,) and set(np.unique(t.action)) == {0, 1}
    assert t.terminated.sum() > 50  # random CartPole falls within ~20 steps
    assert t.truncated.sum() == 8  # one budget-cut episode per sub-env (K = 8), no time-limit hits at random
    assert ds.manifest["num_episodes"] == ds.num_episodes == t.terminated.sum() + t.truncated.sum()


def test_same_seed_same_bytes_in_process(tmp_path: Path) -> None:
    kwargs = {"steps": 3000, "envs_per_worker": 3, "chunk_steps": 700, "progress": False}
    collect("CartPole-v1", out=tmp_path / "a", seed=1, **kwargs)
    collect("CartPole-v1", out=tmp_path / "b", seed=1, **kwargs)
    collect("CartPole-v1", out=tmp_path / "c", seed=2, **kwargs)
    assert dir_bytes(tmp_path / "a") == dir_bytes(tmp_path / "b")
    assert (
        dir_bytes(tmp_path / "a")["shard-w000-c00000.npz"]
        != dir_bytes(tmp_path / "c")["shard-w000-c00000.npz"]
    )


def test_callable_policy_with_epsilon_and_noise(tmp_path: Path) -> None:
    def push_right(obs: np.ndarray) -> np.ndarray:
        return np.full((len(obs), 1), 1.5, np.float32)

    ds = collect(
        "Pendulum-v1",
        steps=600,
        out=tmp_path / "ds",
        policy=push_right,
        epsilon=0.3,
        action_noise=0.1,
        progress=False,
    )
    a = ds.transitions.action[:, 0]
    assert np.all((a >= -2.0) & (a <= 2.0))
    near = np.abs(a - 1.5) < 0.8  # noise std 0.4 around 1.5 (clipped at 2); epsilon replaces ~30 %
    assert 0.55 < near.mean() < 0.95 and np.isclose(a, 2.0).any()
    assert ds.manifest["policy"].endswith("push_right") and ds.manifest["epsilon"] == 0.3


def test_policy_descriptions_are_deterministic() -> None:
    class Named:
        def __init__(self, path: str) -> None:
            self.path = path

        def __call__(self, obs: np.ndarray) -> np.ndarray:
            return obs

        def __repr__(self) -> str:
            return f"Named({self.path!r})"

    class Anonymous:
        def __call__(self, obs: np.ndarray) -> np.ndarray:
            return obs

    assert describe_policy("random") == "random"
    assert describe_policy(Named("runs/a")) == "callable:Named('runs/a')"  # resume tells agents apart
    assert (
        describe_policy(Anonymous())
        == f"callable:{__name__}.test_policy_descriptions_are_deterministic.<locals>.Anonymous"
    )
    assert "0x" not in describe_policy(lambda obs: obs)


def test_worker_answers_out_of_order_requests_identically() -> None:
    # Ray may deliver a restarted actor's retried calls out of order: chunk 2 before chunk 1, even chunk 0 again
    config = WorkerConfig("CartPole-v1", {}, 1, 3000, 0, 4, 400, 0.0, 0.0)
    sequential = RolloutWorker(config)
    expected = [sequential.collect_chunk(i) for i in range(4)]
    worker = RolloutWorker(config)
    for i in (2, 1, 3, 0):
        batch, last = worker.collect_chunk(i)
        assert last == expected[i][1]
        assert encode_shard(batch) == encode_shard(expected[i][0])
    assert worker.collect_chunk(99) == (None, True)


def test_resume_after_simulated_interruption_equals_uninterrupted(tmp_path: Path) -> None:
    kwargs = {"steps": 2500, "envs_per_worker": 2, "chunk_steps": 400, "seed": 4, "progress": False}
    collect("Pendulum-v1", out=tmp_path / "ref", **kwargs)
    collect("Pendulum-v1", out=tmp_path / "cut", **kwargs)
    cut = tmp_path / "cut"
    # what a kill leaves: no manifest, the first shards, a temp file of a shard being written
    (cut / MANIFEST_NAME).unlink()
    for p in sorted(cut.glob("shard-*.npz"))[3:]:
        p.unlink()
    (cut / f"{TMP_PREFIX}shard-w000-c00003.npz.abc").write_bytes(b"half")
    with pytest.raises(CollectError, match="not empty"):
        collect("Pendulum-v1", out=cut, **kwargs)
    collect("Pendulum-v1", out=cut, resume=True, **kwargs)
    assert dir_bytes(cut) == dir_bytes(tmp_path / "ref")
    # resuming a complete dataset is a no-op that returns it
    assert len(collect("Pendulum-v1", out=cut, resume=True, **kwargs)) == 2500
    # killed after the last shard, before the manifest: resume only writes the manifest
    (cut / MANIFEST_NAME).unlink()
    collect("Pendulum-v1", out=cut, resume=True, **kwargs)
    assert dir_bytes(cut) == dir_bytes(tmp_path / "ref")


def test_resume_with_different_parameters_is_refused(tmp_path: Path) -> None:
    collect("CartPole-v1", steps=300, out=tmp_path / "ds", seed=0, progress=False)
    before = dir_bytes(tmp_path / "ds")
    with pytest.raises(CollectError, match=r"seed: stored 0, requested 1"):
        collect("CartPole-v1", steps=300, out=tmp_path / "ds", seed=1, resume=True, progress=False)
    assert dir_bytes(tmp_path / "ds") == before


def test_overwrite_replaces_own_files_and_refuses_foreign_ones(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    collect("CartPole-v1", steps=300, out=out, seed=0, progress=False)
    ds = collect("CartPole-v1", steps=200, out=out, seed=1, overwrite=True, progress=False)
    assert len(ds) == 200 and ds.manifest["seed"] == 1
    (out / "notes.txt").write_text("mine")
    before = dir_bytes(out)
    with pytest.raises(CollectError, match=r"refusing to overwrite.*notes\.txt"):
        collect("CartPole-v1", steps=200, out=out, seed=1, overwrite=True, progress=False)
    assert dir_bytes(out) == before


@pytest.mark.parametrize(
    ("env_id", "kwargs", "error", "match"),
    [
        ("Pendulm-v1", {}, gym.error.NameNotFound, "Did you mean: `Pendulum`"),
        ("Blackjack-v1", {}, UnsupportedSpaceError, "expected a 1-D Box observation space"),
        ("Pendulum-v1", {"steps": 0}, ValueError, "steps: expected an integer >= 1, got 0"),
        ("Pendulum-v1", {"workers": -1}, ValueError, "workers: expected an integer >= 0, got -1"),
        (
            "Pendulum-v1",
            {"envs_per_worker": 0},
            ValueError,
            "envs_per_worker: expected an integer >= 1, got 0",
        ),
        (
            "Pendulum-v1",
            {"policy": "agent.pt"},
            ValueError,
            "got 'agent.pt' .to collect with a saved agent, pass",
        ),
        ("Pendulum-v1", {"epsilon": 1.5}, ValueError, r"epsilon: expected a probability in \[0, 1\]"),
        ("CartPole-v1", {"action_noise": 0.1}, ValueError, "applies to Box action spaces only"),
        (
            "Pendulum-v1",
            {"policy": lambda o: np.zeros((len(o), 2), np.float32)},
            ValueError,
            r"policy returned actions of shape \(8, 2\), expected \(8, 1\)",
        ),
        (
            "Pendulum-v1",
            {"policy": lambda o: np.full((len(o), 1), 3.0)},
            ValueError,
            r"action\[0, 0\] = 3.0, expected a value within the action space bounds \[-2.0, 2.0\]",
        ),
        ("Pendulum-v1", {"policy": lambda o: np.full((len(o), 1), np.nan)}, ValueError, "non-finite"),
        (
            "CartPole-v1",
            {"policy": lambda o: np.zeros(len(o))},
            ValueError,
            "dtype float64, expected an integer",
        ),
    ],
)
def test_bad_input_writes_nothing(tmp_path: Path, env_id: str, kwargs: dict, error: type, match: str) -> None:
    kwargs = {"steps": 100, **kwargs}
    with pytest.raises(error, match=match):
        collect(env_id, out=tmp_path / "ds", progress=False, **kwargs)
    assert not (tmp_path / "ds").exists()


USER_ENV_MODULE = """
import gymnasium as gym
import numpy as np


class Drift(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float64)  # float64, as many hand-written envs
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float64)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.s = self.np_random.uniform(-1, 1, 2)
        return self.s.copy(), {}

    def step(self, action):
        self.s = np.clip(0.9 * self.s + 0.1 * float(action[0]), -1, 1)
        return self.s.copy(), float(-np.sum(self.s**2)), False, False, {}


gym.register("UserDrift-v0", entry_point=Drift, max_episode_steps=30)
"""


def test_user_env_by_module_prefixed_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ "module:EnvName-v0" imports the module (which registers the env) before the id is looked up, as
    gymnasium.make does; the dataset keeps the prefixed id, so it rebuilds the env wherever the module imports."""
    (tmp_path / "simgan_user_envs.py").write_text(USER_ENV_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = collect(
        "simgan_user_envs:UserDrift-v0", steps=100, out=tmp_path / "ds", envs_per_worker=2, progress=False
    )
    assert ds.env_id == "simgan_user_envs:UserDrift-v0" and ds.manifest["max_episode_steps"] == 30
    assert len(ds) == 100 and ds.transitions.obs.dtype == np.float32
    np.testing.assert_array_equal(np.sort(ds.episode_lengths()), [20, 20, 30, 30])
    with pytest.raises(gym.error.Error, match=r"expected an importable module .*'no_such_module'"):
        collect("no_such_module:UserDrift-v0", steps=10, out=tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()


def test_non_empty_output_is_left_untouched(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("x")
    with pytest.raises(CollectError, match=r"not empty; pass --resume .* or --overwrite"):
        collect("Pendulum-v1", steps=100, out=tmp_path / "ds", progress=False)
    assert dir_bytes(tmp_path / "ds") == {"keep.txt": b"x"}


def test_policy_failing_mid_run_leaves_no_manifest(tmp_path: Path) -> None:
    calls = []

    def flaky(obs: np.ndarray) -> np.ndarray:
        calls.append(1)
        return np.zeros((len(obs), 1), np.float32) + (5.0 if len(calls) > 30 else 0.0)

    with pytest.raises(ValueError, match="expected a value within the action space bounds"):
        collect("Pendulum-v1", steps=1000, out=tmp_path / "ds", policy=flaky, chunk_steps=100, progress=False)
    assert not (tmp_path / "ds" / MANIFEST_NAME).exists()


@pytest.mark.mujoco
def test_halfcheetah_small_collection(tmp_path: Path) -> None:
    pytest.importorskip("mujoco")
    ds = collect("HalfCheetah-v5", steps=300, out=tmp_path / "ds", progress=False)
    assert len(ds) == 300 and ds.obs_dim == 17 and ds.transitions.action.shape == (300, 6)
    assert ds.manifest["envs_per_worker"] == 1  # MuJoCo default
    check_episodes(ds)


# ---------------------------------------------------------------------------------------------------------------
# Ray workers (one cluster for the module)
# ---------------------------------------------------------------------------------------------------------------

RAY_KWARGS = {"steps": 160_001, "workers": 2, "seed": 7, "chunk_steps": 4_000, "progress": False}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running one
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_reference(ray_cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "ref"
    collect("Pendulum-v1", out=out, **RAY_KWARGS)
    return out


@pytest.mark.ray
def test_ray_two_workers_deterministic(ray_reference: Path, tmp_path: Path) -> None:
    ds = load_dataset(ray_reference)
    assert len(ds) == 160_001
    check_episodes(ds)
    workers = np.unique(ds.transitions.episode // EPISODE_ID_STRIDE)
    np.testing.assert_array_equal(workers, [0, 1])
    assert (ds.transitions.episode // EPISODE_ID_STRIDE == 0).sum() == 80_001  # worker 0 takes the remainder
    collect("Pendulum-v1", out=tmp_path / "again", **RAY_KWARGS)
    assert dir_bytes(tmp_path / "again") == dir_bytes(ray_reference)  # shards and manifest, byte for byte


@pytest.mark.ray
def test_ray_one_worker_matches_in_process(ray_cluster, tmp_path: Path) -> None:
    kwargs = {"steps": 3000, "seed": 2, "chunk_steps": 1000, "progress": False}
    collect("CartPole-v1", out=tmp_path / "ray", workers=1, **kwargs)
    collect("CartPole-v1", out=tmp_path / "local", workers=0, **kwargs)
    ray_files, local_files = dir_bytes(tmp_path / "ray"), dir_bytes(tmp_path / "local")
    shards = [name for name in local_files if name.startswith("shard-")]
    assert shards and all(ray_files[name] == local_files[name] for name in shards)


@pytest.mark.ray
def test_ray_more_workers_than_cpus_and_steps(ray_cluster, tmp_path: Path) -> None:
    # 4 workers share 2 CPUs (fractional CPUs, no deadlock); budgets [1, 1, 1, 0]: worker 3 has nothing to do
    ds = collect("CartPole-v1", steps=3, workers=4, out=tmp_path / "ds", progress=False)
    assert len(ds) == 3 and ds.transitions.truncated.all()
    np.testing.assert_array_equal(ds.transitions.episode // EPISODE_ID_STRIDE, [0, 1, 2])
    assert [s["file"] for s in ds.manifest["shards"]] == [f"shard-w00{i}-c00000.npz" for i in range(3)]


@pytest.mark.ray
def test_ray_worker_crash_is_retried(ray_cluster, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    env_kwargs = {"marker": str(marker), "crash_at_step": 300}  # each sub-env takes 500 steps
    out = tmp_path / "ds"
    ds = collect(
        "simgan/CrashOnce-v0",
        steps=8000,
        out=out,
        workers=2,
        env_kwargs=env_kwargs,
        chunk_steps=500,
        progress=False,
    )
    assert marker.exists()  # a worker really died
    assert len(ds) == 8000
    check_episodes(ds)  # every episode exactly once: steps contiguous, one end each
    assert not list(out.glob(TMP_PREFIX + "*"))
    marker.unlink()  # same data as an uncrashed run (the crash fires only when no marker exists)
    collect(
        "simgan/CrashOnce-v0",
        steps=8000,
        out=tmp_path / "ok",
        workers=2,
        env_kwargs={**env_kwargs, "crash_at_step": 10**9},
        chunk_steps=500,
        progress=False,
    )
    a = load_dataset(out).transitions
    b = load_dataset(tmp_path / "ok").transitions
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.episode, b.episode)


@pytest.mark.ray
def test_ray_policy_error_surfaces_unwrapped(ray_cluster, tmp_path: Path) -> None:
    state = {"calls": 0}

    def flaky(obs: np.ndarray) -> np.ndarray:
        state["calls"] += 1
        return np.zeros((len(obs), 1 if state["calls"] < 20 else 3), np.float32)

    with pytest.raises(ValueError, match=r"policy returned actions of shape \(8, 3\), expected \(8, 1\)"):
        collect(
            "Pendulum-v1",
            steps=4000,
            out=tmp_path / "ds",
            workers=2,
            policy=flaky,
            chunk_steps=100,
            progress=False,
        )
    assert not (tmp_path / "ds" / MANIFEST_NAME).exists()


def _cli(out: Path, address: str, *extra: str) -> list[str]:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in RAY_KWARGS.items() if k != "progress"]
    return [
        sys.executable,
        "-m",
        "simgan",
        "collect",
        "--env=Pendulum-v1",
        f"--out={out}",
        f"--address={address}",
        "--no-progress",
        *args,
        *extra,
    ]


def _interrupt_after_first_shard(out: Path, address: str, sig: int) -> int:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # A shell starts background jobs (`cmd &`) with SIGINT ignored, and an ignored signal stays ignored in every
    # child, so the CLI would never see the SIGINT under such a runner. The child inherits a handled SIGINT instead.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            _cli(out, address), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while not list(out.glob("shard-*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert not (out / MANIFEST_NAME).exists(), (
        f"collection finished before it was interrupted: {stderr[-500:]}"
    )
    return proc.returncode


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_cli_resumes_to_identical_dataset(
    ray_cluster, ray_reference: Path, tmp_path: Path, sig
) -> None:
    out = tmp_path / "ds"
    code = _interrupt_after_first_shard(out, ray_cluster, sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    if sig == signal.SIGINT:
        assert not list(out.glob(TMP_PREFIX + "*"))  # a clean interrupt leaves no temp files
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        _cli(out, ray_cluster, "--resume"), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "transitions  160,001" in done.stdout
    assert dir_bytes(out) == dir_bytes(ray_reference)


@pytest.mark.parametrize(
    "space",
    [gym.spaces.Box(-2.0, 3.0, (2,), np.float32), gym.spaces.Discrete(5, start=-1)],
    ids=["box", "discrete"],
)
def test_random_actions_drawn_in_blocks_are_the_per_round_draws(space):
    """A worker without a policy draws Box actions UNIFORM_BLOCK rounds at a time; over several blocks they are
    the numbers one call per round gives, so datasets do not depend on the block size (Discrete: per round)."""
    from simgan.rollout import UNIFORM_BLOCK, ActionSampler

    rounds = 2 * UNIFORM_BLOCK + 7
    blocked = ActionSampler(space, 3, None, np.random.default_rng(5))
    per_round = ActionSampler(space, 3, None, np.random.default_rng(5))
    obs = np.zeros((3, 4), np.float32)
    got = np.stack([blocked(obs) for _ in range(rounds)])
    want = np.stack([per_round.uniform() for _ in range(rounds)])
    assert got.dtype == want.dtype and got.shape == (rounds, 3, *space.shape)
    np.testing.assert_array_equal(got, want)
    assert all(space.contains(a) for a in got.reshape(-1, *space.shape))
