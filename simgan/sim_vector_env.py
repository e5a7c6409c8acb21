"""SimVectorEnv: thousands of learned envs stepped in one batched model call, on CPU or GPU.

A real ``gymnasium.vector.VectorEnv`` with **next-step autoreset** (``metadata["autoreset_mode"] ==
AutoresetMode.NEXT_STEP``, gymnasium's default): when a sub-env terminates or truncates at step t, step t + 1
ignores its action and returns its new start observation with reward 0 and terminated = truncated = False.
Agents and wrappers that read the metadata (gymnasium's vector ``RecordEpisodeStatistics``, CleanRL-style
loops) work unchanged.

Two I/O modes:

* numpy (default): actions in, observations / rewards / flags out as numpy arrays, one host copy per step.
* ``torch_mode=True``: everything stays a torch tensor on the model's device; actions may be tensors. The step
  path never copies to the host (no ``.cpu()``, ``.item()`` or numpy), so a GPU training loop never waits on
  a sync (except with a callable ``initial_states``, which runs on the host when a sub-env restarts). On
  CUDA that means action *values* are not checked by default (``validate_actions=None``): out-of-bounds
  actions are clipped to the action space and NaN/inf actions truncate their sub-env with
  ``info["non_finite"]``. Pass ``validate_actions=True`` for the raising checks (one sync per step).

Infos (gymnasium's vector convention, a ``_key`` mask per key; the mask is False for sub-envs that were
autoresetting in this step): ``realism`` (B float), ``unrealistic``, ``out_of_support``, ``non_finite`` (B bool).
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from simgan.sim_batch import (
    FLAG_KEYS,
    RESET_OPTIONS,
    BatchSimulator,
    InitialStates,
    TransitionFnArg,
    check_options,
    resolve_model,
    validate_numpy_action,
)
from simgan.world_model import WorldModel


class SimVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` learned envs stepped together (see the module docstring for autoreset and torch mode).

    Example::

        envs = simgan.SimVectorEnv("runs/pendulum", num_envs=4096, seed=0)
        obs, _ = envs.reset()                                   # 4096 x obs_dim
        obs, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())

    Args:
        model: a WorldModel or a model directory.
        num_envs: number of sub-envs B.
        device: ``"auto"`` (a model object stays where it is; a path loads onto CUDA when available), ``"cpu"``,
            ``"cuda"``.
        torch_mode: torch tensors on the device in and out instead of numpy arrays.
        validate_actions: raise ``ValueError`` on NaN/inf/out-of-bounds actions. Default: always in numpy
            mode and on CPU; not in torch mode on CUDA (it would cost a host sync per step).
        initial_states, max_episode_steps, reward_fn, termination_fn, realism_threshold, support_margin,
        compute_realism, precision, halt_unknown, compile, reward_values, seed: as for :class:`simgan.sim_env.SimEnv`.

    Reset options: ``reset_mask`` (B bools) resets only those sub-envs; ``state``: (obs_dim,) broadcast or
    (num_envs, obs_dim) start states (rows picked by ``reset_mask``); ``noise``: None, ``"fixed"``, an int seed
    (sub-env k of the reset gets ``seed + k``), a list of int seeds (one per reset sub-env), or an array
    (noise_dim,) / (n_reset, noise_dim) used every step. A noise mode lasts until the sub-env's next explicit
    reset (autoresets keep it), so N sub-envs started at one state with N seeds give N reproducible futures.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        model: WorldModel | str | os.PathLike,
        num_envs: int = 4096,
        *,
        device: str | torch.device = "auto",
        torch_mode: bool = False,
        validate_actions: bool | None = None,
        initial_states: InitialStates = "dataset",
        max_episode_steps: int | None = None,
        reward_fn: TransitionFnArg = None,
        termination_fn: TransitionFnArg = None,
        realism_threshold: float | None = None,
        support_margin: float = 0.1,
        compute_realism: bool = True,
        precision: str = "float32",
        halt_unknown: bool = False,
        compile: bool = False,
        reward_values: np.ndarray | str | None = None,
        seed: int | None = None,
    ) -> None:
        self.model = resolve_model(model, device)
        info = self.model.info
        self.sim = BatchSimulator(
            self.model,
            num_envs,
            initial_states=initial_states,
            max_episode_steps=info.max_episode_steps if max_episode_steps is None else max_episode_steps,
            reward_fn=reward_fn,
            termination_fn=termination_fn,
            realism_threshold=realism_threshold,
            support_margin=support_margin,
            compute_realism=compute_realism,
            precision=precision,
            halt_unknown=halt_unknown,
            compile=compile,
            reward_values=reward_values,
        )
        self.num_envs = self.sim.num_envs
        self.device = self.sim.device
        self.max_episode_steps = self.sim.max_episode_steps
        self.single_observation_space = info.observation_space
        self.single_action_space = info.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.torch_mode = bool(torch_mode)
        if validate_actions is None:
            validate_actions = not self.torch_mode or self.device.type == "cpu"
        self.validate_actions = bool(validate_actions)
        self._autoreset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._needs_reset = True
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)

    @property
    def stats(self) -> dict[str, int]:
        """Transitions simulated and flagged (unrealistic, out_of_support, non_finite) since construction."""
        return self.sim.stats()

    def get_stats(self) -> dict[str, int]:
        return self.sim.stats()

    # ---- reset ----------------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        options = check_options(options, RESET_OPTIONS)
        sim, n = self.sim, self.num_envs
        with torch.no_grad():
            mask = options.get("reset_mask")
            if mask is None:
                rows = torch.arange(n, device=self.device)
                sim.generator.manual_seed(int(self.np_random.integers(2**63 - 1)))
            else:
                mask = torch.as_tensor(
                    mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
                )
                if mask.shape != (n,) or mask.dtype != torch.bool:
                    raise ValueError(
                        f"options['reset_mask']: expected {n} bools, got shape {tuple(mask.shape)} {mask.dtype}"
                    )
                if self._needs_reset and not bool(mask.all()):
                    raise gym.error.ResetNeeded("reset all sub-envs (no reset_mask) before a partial reset")
                rows = mask.nonzero().squeeze(1).to(self.device)
            if options.get("state") is not None:
                start = self._start_states(options["state"], rows)
            else:
                start = sim.draw_initial(len(rows), self.np_random)
            sim.reset_rows(rows, start, options.get("noise"))
            self._autoreset = self._autoreset.index_fill(0, rows, False)
        self._needs_reset = False
        if self.torch_mode:
            return sim.obs.clone(), {}
        return self._obs_to_numpy(sim.obs.cpu().numpy()), {}

    def _start_states(self, state: Any, rows: torch.Tensor) -> torch.Tensor:
        arr = state.detach().cpu().numpy() if isinstance(state, torch.Tensor) else np.asarray(state)
        d, n = self.sim.obs_dim, self.num_envs
        if arr.shape == (d,):
            arr = np.broadcast_to(arr, (len(rows), d))
        elif arr.shape == (n, d):
            arr = arr[rows.cpu().numpy()]
        else:
            raise ValueError(
                f"options['state']: expected state of shape ({d},) or ({n}, {d}), got {arr.shape}"
            )
        return self.sim.check_states(arr, "options['state']")

    # ---- step -----------------------------------------------------------------------------------------------
    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        if self._needs_reset:
            raise gym.error.ResetNeeded("Cannot call SimVectorEnv.step() before calling reset()")
        action = self._action_tensor(actions)
        sim = self.sim
        with torch.no_grad():
            restarting = self._autoreset  # sub-envs that ended last step start a new episode now
            active = ~restarting
            # the restarting rows start afresh (compiled: inside the step's graph)
            out = sim.step(action, active, lambda: self._fresh_states(restarting))
            reward, terminated, truncated = out["reward"], out["terminated"], out["truncated"]
            realism, flags = out["realism"], [out[k] for k in FLAG_KEYS]
            self._autoreset = terminated | truncated

        if self.torch_mode:
            infos: dict[str, Any] = {"realism": realism, "_realism": active}
            for key, flag in zip(FLAG_KEYS, flags):
                infos[key], infos["_" + key] = flag, active
            return sim.obs.clone(), reward, terminated, truncated, infos  # the caller may edit it in place

        # numpy mode: one host copy of everything.
        d = sim.obs_dim
        columns = [reward, terminated, truncated, realism, active, *flags]
        packed = (
            torch.cat([sim.obs, torch.stack([c.to(torch.float32) for c in columns], dim=1)], dim=1)
            .cpu()
            .numpy()
        )
        active_np = packed[:, d + 4] > 0.5
        infos = {"realism": packed[:, d + 3].copy(), "_realism": active_np.copy()}
        for k, key in enumerate(FLAG_KEYS):
            infos[key], infos["_" + key] = packed[:, d + 5 + k] > 0.5, active_np.copy()
        return (
            self._obs_to_numpy(packed[:, :d]),
            packed[:, d].copy(),
            packed[:, d + 1] > 0.5,
            packed[:, d + 2] > 0.5,
            infos,
        )

    def _fresh_states(self, restarting: torch.Tensor) -> torch.Tensor:
        """B x D start states for the ``restarting`` rows (the other rows' values are not used)."""
        sim = self.sim
        if sim.initial_fn is None:
            # Always draw and blend (no host check of `restarting.any()`: no sync in torch mode).
            return sim.draw_initial(self.num_envs, self.np_random)
        fresh = sim.obs.clone()
        rows = restarting.nonzero().squeeze(1)
        if len(rows):
            fresh[rows] = sim.draw_initial(len(rows), self.np_random)
        return fresh

    def _action_tensor(self, actions: Any) -> torch.Tensor:
        """Validated B x act_dim float32 (Box) or B int64 (Discrete) tensor on the device."""
        space, n = self.single_action_space, self.num_envs
        discrete = isinstance(space, gym.spaces.Discrete)
        if isinstance(actions, torch.Tensor) and self.torch_mode:
            expected = (n,) if discrete else (n, *space.shape)
            if tuple(actions.shape) != expected:
                raise ValueError(f"actions: expected shape {expected}, got {tuple(actions.shape)}")
            if (
                actions.dtype == torch.bool
                or actions.is_complex()
                or (discrete and actions.is_floating_point())
            ):
                kind = "an integer" if discrete else "a float (or integer)"
                raise ValueError(f"actions: expected {kind} dtype for {space}, got {actions.dtype}")
            if self.validate_actions:
                validate_numpy_action(actions.detach().cpu().numpy(), space, (n,))
            return actions.to(self.device, torch.int64 if discrete else torch.float32)
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        arr = validate_numpy_action(actions, space, (n,))
        return torch.as_tensor(arr, device=self.device)

    def _obs_to_numpy(self, obs: np.ndarray) -> np.ndarray:
        return np.array(obs, dtype=self.single_observation_space.dtype, copy=True)

    def __repr__(self) -> str:
        mode = "torch" if self.torch_mode else "numpy"
        return (
            f"SimVectorEnv({self.model.info.env_id}, num_envs={self.num_envs}, device={self.device}, {mode})"
        )
