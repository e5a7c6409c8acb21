"""Data-parallel training: shard slices, ranks in lock-step (gloo, no Ray), a real two-node Ray cluster on
loopback with token authentication (collect + train on both nodes), and a worker killed mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_configs import TINY_GAN

import simgan
from simgan.checkpoint import CheckpointError, load_model, load_model_files
from simgan.data import shard_slice
from simgan.dataset_format import DatasetError, read_manifest
from simgan.training import LAST_DIR, DistContext

TINY_FLAGS = [
    "--batch-size", "32", "--eval-size", "256", "--mean-hidden", "32", "32", "--residual-hidden", "32",
    "--disc-hidden", "32", "--no-figures", "--device", "cpu", "--quiet",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simgan_cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simgan", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """2000 Pendulum steps in 4 shards (2 collection workers, in this process's Ray-free path per worker)."""
    out = tmp_path_factory.mktemp("data") / "pendulum"
    simgan.collect("Pendulum-v1", steps=2000, workers=0, out=out, seed=0, chunk_steps=500, progress=False)
    return out


# ---- the per-worker data path ---------------------------------------------------------------------------------


def test_shard_slice_round_robin_and_too_few_shards(dataset: Path) -> None:
    manifest = read_manifest(dataset)
    files = [e["file"] for e in manifest["shards"]]
    assert len(files) >= 2
    slices = [[e["file"] for e in shard_slice(manifest, r, 2)] for r in range(2)]
    assert sorted(slices[0] + slices[1]) == sorted(files) and not set(slices[0]) & set(slices[1])
    with pytest.raises(DatasetError, match=f"expected at least {len(files) + 1} shards"):
        shard_slice(manifest, 0, len(files) + 1)
    with pytest.raises(ValueError, match="expected 0 <= rank < world_size, got 2 / 2"):
        shard_slice(manifest, 2, 2)


def _rank_main(rank: int, port: int, data: str, out: str, result: str) -> None:
    """One rank of a 2-process gloo group (no Ray): slice, shared loop, write this rank's final weights."""
    from simgan.distributed import _dataset_slice
    from simgan.training import train

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    dist = DistContext(rank, 2)
    dataset, _ = _dataset_slice(Path(data), TINY_GAN.validation_fraction, dist)
    model = train(dataset, out, TINY_GAN, progress=False, dist=dist)
    if rank == 1:
        torch.save({k: v.detach().clone() for k, v in model.state_tensors().items()}, result)
        (Path(result).parent / "validation_rows").write_text(str(len(dataset.validation)))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_stay_identical_and_validate_on_everything(dataset: Path, tmp_path: Path) -> None:
    out, result = tmp_path / "run", tmp_path / "rank1.pt"
    torch.multiprocessing.spawn(_rank_main, args=(free_port(), str(dataset), str(out), str(result)), nprocs=2)
    # rank 1's weights after the last step equal the ones rank 0 saved in last/ (gradients, EMA scale synced)
    saved = load_model_files(out / LAST_DIR).tensors
    rank1 = torch.load(result, weights_only=True)
    for name, tensor in rank1.items():
        if name != "realism_reference":  # set by rank 0's checkpointing only
            torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0, msg=name)
    # every rank validates on the same rows as a single process would
    single = simgan.load_dataset(dataset)
    assert int((tmp_path / "validation_rows").read_text()) == len(single.validation)
    info = load_model_files(out).info
    assert len(info.initial_states) == int((single.train.step == 0).sum())
    np.testing.assert_array_equal(info.state_low, np.minimum(single.train.obs, single.train.next_obs).min(0))
    assert not (out / "tb").exists() or any((out / "tb").iterdir())
    load_model(out)


def test_cli_rejects_bad_values(dataset: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cases = [
        (["--num-workers", "-1"], "--num-workers: expected an integer >= 0, got -1"),
        (["--use-gpu"], "expected --num-workers >= 1 with them, got 0"),
        (["--num-workers", "9"], "expected at least 9 shards"),
        (
            ["--model", "ensemble", "--num-workers", "2"],
            "--num-workers: expected 0 with --model ensemble, got 2",
        ),
    ]
    for flags, message in cases:
        result = simgan_cli(
            "train", "--data", str(dataset), "--out", str(tmp_path / "x"), *flags, env=env, timeout=60
        )
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr)
        assert not (tmp_path / "x").exists()
    for command in (["collect", "--steps", "10"], ["loop"]):
        result = simgan_cli(
            *command, "--env", "Pendulum-v1", "--out", str(tmp_path / "x"), "--workers", "0", "--address",
            "127.0.0.1:1", env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "--address: expected --workers >= 1" in result.stderr and not (tmp_path / "x").exists()


# ---- a real two-node cluster on loopback ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) + a second node (1 CPU, resource "node2") started with `ray start`, token authentication on.

    Yields the environment (token, address) for CLI subprocesses. Only this cluster's processes (found by its own
    temp dir) are stopped at the end, never other Ray instances on the machine.
    """
    pytest.importorskip("ray.train")
    root = Path(tempfile.mkdtemp(prefix="sgray"))  # short: Ray's socket paths must fit in 107 bytes
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    port = free_port()
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ADDRESS": "",
    }
    env.pop("RAY_ADDRESS")
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={root / 't'}"]
    try:
        subprocess.run(
            [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        address = f"127.0.0.1:{port}"
        subprocess.run(
            [ray_bin, "start", f"--address={address}", "--resources={\"node2\": 1}", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield {"env": env, "address": address, "root": root}
    finally:
        _stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def _stop_cluster(root: Path) -> None:
    """SIGTERM, then SIGKILL, the processes of this cluster: those whose command line or open files are under
    its temp dir (Ray's agents rename themselves, so the command line alone misses them)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for pid in _pids_using(root) if pid != os.getpid()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if pids and sig == signal.SIGTERM:
            time.sleep(3)


def _pids_using(root: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            files = [os.readlink(fd) for fd in (proc / "fd").iterdir()] if str(root) not in cmdline else []
        except OSError:
            continue
        if str(root) in cmdline or any(f.startswith(str(root)) for f in files):
            pids.append(int(proc.name))
    return pids


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_cluster_collect_and_train(cluster, tmp_path: Path) -> None:
    env, address = cluster["env"], cluster["address"]
    data, run = tmp_path / "data", tmp_path / "run"
    collected = simgan_cli(
        "collect", "--env", "Pendulum-v1", "--steps", "2000", "--workers", "2", "--chunk-steps", "500",
        "--out", str(data), "--address", address, "--no-progress", env=env,
    )  # fmt: skip
    assert collected.returncode == 0, collected.stderr[-3000:]
    trained = simgan_cli(
        "train", "--data", str(data), "--out", str(run), "--num-workers", "2", "--address", address,
        "--steps", "20", "--eval-every", "10", *TINY_FLAGS, env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "on 2 node(s)" in trained.stdout
    record = json.loads((run / "distributed.json").read_text())
    assert record["world_size"] == 2 and record["backend"] == "gloo" and record["steps"] == 20
    assert len({w["node_id"] for w in record["workers"]}) == 2  # one training worker per node
    assert sorted(f for w in record["workers"] for f in w["shards"]) == sorted(
        e["file"] for e in read_manifest(data)["shards"]
    )
    load_model(run)
    resumed = simgan_cli(
        "train", "--data", str(data), "--out", str(run), "--num-workers", "2", "--resume", "--steps", "30",
        "--quiet", env={**env, "RAY_ADDRESS": address},
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((run / "distributed.json").read_text())
    assert (record["resumed_from_step"], record["steps"]) == (20, 30)

    # collection actors ran on both nodes too (Ray's state API keeps finished actors)
    nodes = subprocess.run(
        [sys.executable, "-c", _LIST_ACTORS, address], env=env, capture_output=True, text=True, timeout=60
    )
    assert nodes.returncode == 0, nodes.stderr[-2000:]
    assert len(json.loads(nodes.stdout)) == 2, nodes.stdout

    # token authentication: a driver holding another token is refused
    wrong = cluster["root"] / "wrong-token"
    wrong.write_text(secrets.token_hex(32))
    refused = subprocess.run(
        [sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1])", address],
        env={**env, "RAY_AUTH_TOKEN_PATH": str(wrong)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "auth" in refused.stderr.lower() or "token" in refused.stderr.lower(), refused.stderr[-2000:]


_LIST_ACTORS = """
import json, sys
import ray
from ray._private import state  # the GCS actor table: Ray's public state API needs the dashboard, not run here
ray.init(address=sys.argv[1], log_to_driver=False)
actors = state.actors().values()
print(json.dumps(sorted({a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == "RolloutWorker"})))
"""


# ---- a worker killed during training ----------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("max_failures", [0, 1])
def test_killed_worker_fails_clearly_or_recovers(
    cluster, dataset: Path, tmp_path: Path, max_failures: int
) -> None:
    run = tmp_path / "run"
    # rank 1 dies abruptly in step 16 of 30 (4 gradient all-reduces per step), after the checkpoint of step 10
    env = {**cluster["env"], "SIMGAN_TEST_KILL_WORKER": "1:62"}
    result = simgan_cli(
        "train", "--data", str(dataset), "--out", str(run), "--num-workers", "2", "--address", cluster["address"],
        "--max-failures", str(max_failures), "--steps", "30", "--eval-every", "10", *TINY_FLAGS, env=env,
    )  # fmt: skip
    if max_failures == 0:
        assert result.returncode == 2, result.stderr[-3000:]
        assert "training on 2 Ray workers failed after 0 restart(s): " in result.stderr
        assert "rank 1: The actor died" in result.stderr  # which worker, and what happened to it
        assert f"the last complete checkpoint is in {run / LAST_DIR}" in result.stderr
        for directory in (run, run / LAST_DIR):  # both complete and loadable, from step 10
            assert load_model_files(directory).metrics["step"] == 10
            load_model(directory)
        assert not (run / "distributed.json").exists()
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        record = json.loads((run / "distributed.json").read_text())
        assert record["resumed_from_step"] == 10 and record["steps"] == 30
        assert load_model_files(run / LAST_DIR).metrics["step"] == 30
        load_model(run)
    with pytest.raises(CheckpointError):
        load_model_files(tmp_path)  # sanity: the check above would notice a missing/corrupt directory


# ---- learned-env rollouts sharded over Ray actors -------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_sharded_rollouts_match_in_process_shards(dataset: Path, tmp_path: Path) -> None:
    from simgan.shards import sharded_rollouts
    from simgan.training import train

    model_dir = tmp_path / "model"
    train(simgan.load_dataset(dataset), model_dir, TINY_GAN, progress=False)
    kwargs = {"num_shards": 2, "envs_per_shard": 3, "horizon": 5, "seed": 7}
    policy = lambda obs: np.clip(-obs[:, :1], -2.0, 2.0)  # noqa: E731 (pickled by value for the actors)
    local = sharded_rollouts(model_dir, policy=policy, workers=False, **kwargs)
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = sharded_rollouts(model_dir, policy=policy, **kwargs)
        plan = np.zeros((6, 5, 1), np.float32)
        open_loop = sharded_rollouts(model_dir, actions=plan, **kwargs)
    finally:
        ray.shutdown()
    assert remote["obs"].shape == (6, 6, 3) and remote["rewards"].shape == (6, 5)
    for key, value in local.items():  # shard k (seed 7 + k) gives the same rows wherever it runs
        np.testing.assert_array_equal(remote[key], value, err_msg=key)
    assert not np.array_equal(remote["obs"][:3, 0], remote["obs"][3:, 0])  # shards are seeded differently
    np.testing.assert_array_equal(open_loop["actions"], plan)
    with pytest.raises(ValueError, match=r"actions: expected shape \(6, 5, ...\)"):
        sharded_rollouts(model_dir, actions=plan[:, :4], workers=False, **kwargs)
    with pytest.raises(ValueError, match="expected exactly one of them, got neither"):
        sharded_rollouts(model_dir, workers=False, **kwargs)


# ---- agent evaluation and forecasting split over Ray actors (--shards) ------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(dataset: Path, tmp_path_factory) -> dict[str, Path]:
    """A 20-step GAN and an untrained (but seeded, so deterministic) PPO agent for its spaces."""
    from agents import PPOAgent, PPOConfig
    from simgan.training import train

    root = tmp_path_factory.mktemp("sharded")
    train(simgan.load_dataset(dataset), root / "model", TINY_GAN, progress=False)
    info = load_model_files(root / "model").info
    agent = PPOAgent(info.observation_space, info.action_space, PPOConfig(hidden_size=16, seed=3))
    agent.save(root / "agent")
    return {"model": root / "model", "agent": root / "agent", "root": root}


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU Ray cluster in this process (the CLI's run_shards finds it initialised); yields its address."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """As in a 1-CPU actor (Ray sets OMP_NUM_THREADS=1): bit-equal results need the same matmul threading."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cli_json(*args: str, out: Path) -> dict:
    from simgan.cli import main

    assert main([*args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.ray
@pytest.mark.slow
def test_agent_eval_shards(tiny_run, local_ray, one_torch_thread, tmp_path: Path) -> None:
    base = ["agent", "eval", "--agent", str(tiny_run["agent"]), "--sim", str(tiny_run["model"])]
    base += ["--seed", "5", "--device", "cpu"]
    # single env: episode i is reset with seed + i wherever it runs, so 2 shards give the in-process episodes
    single = [*base, "--episodes", "3"]
    in_process = _cli_json(*single, out=tmp_path / "a.json")
    assert len(in_process["returns"]) == 3 and len(set(in_process["returns"])) == 3
    assert _cli_json(*single, "--shards", "2", out=tmp_path / "b.json") == in_process
    # vector env: S=1 is the in-process run exactly; S=2 scores every episode once, over other reset streams
    vector = [*base, "--episodes", "5", "--num-envs", "2"]
    in_process = _cli_json(*vector, out=tmp_path / "c.json")
    assert _cli_json(*vector, "--shards", "1", out=tmp_path / "d.json") == in_process
    two = _cli_json(*vector, "--shards", "2", out=tmp_path / "e.json")
    assert len(two["returns"]) == len(two["lengths"]) == 5 and set(two) == set(in_process)
    assert two["mean_return"] == pytest.approx(np.mean(two["returns"]))
    assert two["std_return"] == pytest.approx(np.std(two["returns"]))
    assert two["returns"] != in_process["returns"]
    # --known-reward reaches every shard: Pendulum's own reward (<= 0) on the same learned trajectories
    known = _cli_json(*single, "--known-reward", out=tmp_path / "f.json")
    learned = _cli_json(*single, out=tmp_path / "g.json")
    assert known["reward_fn"] == "known" and "reward_fn" not in learned
    assert known["lengths"] == learned["lengths"] and known["returns"] != learned["returns"]
    assert all(-16.3 * 200 <= r <= 0.0 for r in known["returns"])
    assert _cli_json(*single, "--known-reward", "--shards", "2", out=tmp_path / "h.json") == known


@pytest.mark.ray
@pytest.mark.slow
def test_forecast_shards(
    dataset: Path, tiny_run, local_ray, one_torch_thread, tmp_path: Path, capsys
) -> None:
    from simgan.cli import main
    from simgan.cli.forecast import load_policy
    from simgan.forecasting import Forecast, forecast

    model_dir, agent = tiny_run["model"], str(tiny_run["agent"])
    flags = ["forecast", "--model", str(model_dir), "--states-from", str(dataset), "--num-states", "2"]
    flags += ["--horizon", "6", "--samples", "7", "--seed", "11", "--device", "cpu", "--noise-spread", "1.25"]
    # a saved agent as the policy, loaded inside each actor; 7 futures -> shards of 4 and 3 (seeds 11, 12)
    assert main([*flags, "--policy", agent, "--shards", "2", "--out", str(tmp_path / "agent")]) == 0
    sharded = Forecast.load(tmp_path / "agent")
    assert sharded.shape == (2, 7, 6)
    # each shard's agent samples its own action noise: first actions of futures 0 and 4 (shards 0, 1) differ
    assert not np.array_equal(sharded.actions[:, 0, 0], sharded.actions[:, 4, 0])
    model = load_model(model_dir, device="cpu")
    spaces = model.info.observation_space, model.info.action_space
    for k, (lo, hi) in enumerate([(0, 4), (4, 7)]):
        policy = load_policy(agent, *spaces, shard=k)  # loaded afresh, as in shard k
        alone = forecast(
            model,
            sharded.start_states,
            policy=policy,
            horizon=6,
            num_samples=hi - lo,
            seed=11 + k,
            noise_spread=1.25,
        )
        assert sharded.noise_correlation == alone.noise_correlation == model.noise_correlation
        assert sharded.noise_spread == alone.noise_spread == 1.25  # the flag reached every shard
        for name in Forecast.ARRAYS:
            part = getattr(sharded, name) if name == "start_states" else getattr(sharded, name)[:, lo:hi]
            np.testing.assert_array_equal(part, getattr(alone, name), err_msg=f"shard {k}: {name}")

    # the command in a subprocess on the same cluster through --address: the files of an in-process run
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = simgan_cli(*flags, "--shards", "2", "--address", local_ray, "--out", str(tmp_path / "s"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*flags, "--out", str(tmp_path / "p")]) == 0
    names = [sorted(p.name for p in (tmp_path / run).iterdir()) for run in ("s", "p")]
    assert names[0] == names[1] and "fan_state1.png" in names[0]
    assert json.loads((tmp_path / "s" / "forecast.json").read_text())["num_samples"] == 7
    shard0 = Forecast.load(tmp_path / "s")
    alone = forecast(model, shard0.start_states, horizon=6, num_samples=4, seed=11, noise_spread=1.25)
    np.testing.assert_array_equal(shard0.observations[:, :4], alone.observations)

    # an error inside the actors reaches the command line as itself: one line, exit status 2
    bad_state = [
        "forecast",
        "--model",
        str(model_dir),
        "--state",
        "[1, 0]",
        "--samples",
        "2",
        "--shards",
        "2",
    ]
    assert main(bad_state) == 2
    assert "error: states: expected shape (3,) or (B, 3), got (2,)" in capsys.readouterr().err


def test_shard_flags_are_checked(tiny_run, capsys) -> None:
    from simgan.cli import main

    model, agent = str(tiny_run["model"]), str(tiny_run["agent"])
    forecast = ["forecast", "--model", model, "--state", "[1, 0, 0]", "--horizon", "2", "--samples", "3"]
    evaluate = ["agent", "eval", "--agent", agent, "--sim", model, "--episodes", "3"]
    cases = [
        ([*forecast, "--shards", "-1"], "--shards: expected an integer >= 0, got -1"),
        ([*forecast, "--address", "127.0.0.1:1"], "--address: expected --shards >= 1"),
        ([*forecast, "--shards", "4"], "--samples: expected at least one future per shard (4), got 3"),
        ([*evaluate, "--shards", "-1"], "--shards: expected an integer >= 0, got -1"),
        ([*evaluate, "--address", "127.0.0.1:1"], "--address: expected --shards >= 1"),
        ([*evaluate, "--shards", "4"], "--episodes: expected at least one episode per shard (4), got 3"),
    ]
    for argv, message in cases:  # all refused before any Ray cluster starts
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
