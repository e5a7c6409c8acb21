"""The learned environment: a trained :class:`~simgan.world_model.WorldModel` as a real ``gymnasium.Env``.

:class:`SimEnv` is one simulated env (numpy in/out, passes ``gymnasium.utils.env_checker.check_env``);
:class:`simgan.sim_vector_env.SimVectorEnv` steps thousands of them in one batched model call. Both run the
same engine, :class:`simgan.sim_batch.BatchSimulator` (see there for what one step does), so a batch of N
behaves exactly like N single envs given the same noise.

Returned observations never contain NaN or inf and stay inside the observation space. Counters of every flag
(unrealistic, out of support, non-finite) since construction: ``env.stats``.
"""

from __future__ import annotations

import os
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding

from simgan.sim_batch import (
    BatchSimulator,
    InitialStates,
    TransitionFnArg,
    check_options,
    resolve_model,
    validate_numpy_action,
)
from simgan.world_model import WorldModel


class SimEnv(gym.Env[np.ndarray, Any]):
    """One simulated env driven by a learned world model: a real ``gymnasium.Env``.

    Example::

        env = simgan.SimEnv("runs/pendulum", seed=0)
        obs, info = env.reset()
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        info["realism"], env.stats   # per-transition realism; flag counters since construction

    Args:
        model: a :class:`~simgan.world_model.WorldModel`, or a model directory (loaded with
            :func:`simgan.checkpoint.load_model`).
        initial_states: ``"dataset"`` (start states of the training episodes), an array N x obs_dim to draw
            from, or a callable ``np_random -> obs`` (obs_dim,).
        max_episode_steps: truncation limit; default the source env's limit (``model.info.max_episode_steps``).
        device: ``"auto"`` (a model object stays where it is; a path loads onto CUDA when available), ``"cpu"``,
            ``"cuda"``.
        reward_fn: optional ``(obs B x D, action, next_obs B x D) -> reward B`` (torch in, torch out; actions
            B x act_dim float for Box, B long for Discrete) replacing the learned reward, or ``"known"``: the
            source env's own reward (:mod:`envs.known`: Pendulum, CartPole, Acrobot, MountainCar,
            InvertedPendulum and simgan's multimodal envs), so only the dynamics are learned (PETS).
        termination_fn: same signature, returns B bools; replaces the learned termination (``"known"`` too).
        reward_values: round the learned reward to the nearest of these values: ``"data"`` for the few values
            the training data's reward took (``model.info.reward_values``: CartPole's 1, InvertedPendulum's 0
            and 1, Acrobot's -1 and 0), or an array. For rewards that take only a few values it removes the
            learned reward's small errors (1.02 where reality pays 1), which otherwise order equally good
            policies at random. ``None`` (default): the learned reward as it comes.
        realism_threshold: transitions whose realism is below it end the episode (truncated,
            ``info["unrealistic"]``). ``None``: never.
        support_margin: next states outside [state_low - m, state_high + m] (m = margin x data range, per
            dimension) are truncated with ``info["out_of_support"]``.
        halt_unknown: end the episode as *terminated* instead of truncated when a transition is out of support
            or unrealistic (MOReL's pessimistic HALT). Agents bootstrap a truncated episode from its last state's
            value, so by default leaving the model's data costs nothing; halted, it costs the episode's future,
            and an agent trained here learns to stay where the model is known. Pessimistic where rewards are
            positive (alive bonuses: CartPole, InvertedPendulum, Hopper); where they are negative (Pendulum)
            ending early is a gain, so leave it off there.
        compute_realism: call ``model.realism`` each step (``info["realism"]``); off saves the discriminator pass.
        precision: ``"float32"`` or ``"bfloat16"``: run the model's matmuls under ``torch.autocast`` (opt-in,
            approximate: several times faster on CPUs with AVX512-BF16/AMX and on GPUs; outputs stay float32).
        compile: run each step's model pass and checks as one ``torch.compile`` graph (opt-in), with the
            model's weights frozen into it (inductor's freezing: constants, and on the CPU packed for oneDNN with
            each layer's activation fused). The first step compiles (3-20 s on a 2-core CPU; again for each new
            num_envs, precision or model shape, up to torch's ``torch._dynamo.config.recompile_limit``
            configurations per process, after which it runs eagerly) and needs a C++ compiler on the CPU (Triton
            on CUDA). The env keeps the weights it was built with: after a change to the model's weights (in
            place or by replacing a parameter) its next step raises ``RuntimeError``; build a new env. Measured
            on a 2-core CPU: 1.4-2.1x faster for one env and 1.3-2.1x for 64 sub-envs; from 1,024 on, 1.1-2x in
            bfloat16 and 0.8-1.1x in float32; same seed, same trajectory; equal to the eager step up to float
            rounding. Measure your own case (``bench_sim.py --compile``).
        seed: seeds the env's generator so the first ``reset()`` is reproducible too.

    Reset options: ``{"state": s}`` starts exactly at s (obs_dim,); ``{"noise": n}`` fixes the randomness of
    the episode: an int seed (own generator), ``"fixed"`` (one draw reused every step) or an array
    (noise_dim,) used every step.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(
        self,
        model: WorldModel | str | os.PathLike,
        *,
        initial_states: InitialStates = "dataset",
        max_episode_steps: int | None = None,
        device: str | torch.device = "auto",
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
        self.observation_space = info.observation_space
        self.action_space = info.action_space
        self.sim = BatchSimulator(
            self.model,
            1,
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
        self.max_episode_steps = self.sim.max_episode_steps
        self._needs_reset = True
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)

    @property
    def stats(self) -> dict[str, int]:
        """Transitions simulated and flagged (unrealistic, out_of_support, non_finite) since construction."""
        return self.sim.stats()

    def get_stats(self) -> dict[str, int]:
        return self.sim.stats()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = check_options(options, ("state", "noise"))
        sim = self.sim
        with torch.no_grad():
            # A new episode: a fresh torch stream derived from np_random (reproducible from reset(seed=...)).
            sim.generator.manual_seed(int(self.np_random.integers(2**63 - 1)))
            if options.get("state") is not None:
                state = np.asarray(
                    options["state"].detach().cpu()
                    if isinstance(options["state"], torch.Tensor)
                    else options["state"]
                )
                if state.shape != (sim.obs_dim,):
                    raise ValueError(
                        f"options['state']: expected state of shape ({sim.obs_dim},), got {state.shape}"
                    )
                start = sim.check_states(state[None], "options['state']")
            else:
                start = sim.draw_initial(1, self.np_random)
            sim.reset_rows(torch.zeros(1, dtype=torch.long, device=sim.device), start, options.get("noise"))
        self._needs_reset = False
        return self._host_obs(sim.obs[0]), {}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise gym.error.ResetNeeded("Cannot call SimEnv.step() before calling reset()")
        act = validate_numpy_action(action, self.action_space, ())
        with torch.no_grad():
            out = self.sim.step(torch.as_tensor(act[None], device=self.sim.device))
            # One host copy for everything: obs | reward | terminated | truncated | realism | 3 flags.
            scalars = [out[k][0].to(torch.float32) for k in ("reward", "terminated", "truncated", "realism")]
            flags = [out[k][0].to(torch.float32) for k in ("unrealistic", "out_of_support", "non_finite")]
            packed = torch.cat([out["obs"][0], torch.stack(scalars + flags)]).cpu().numpy()
        d = self.sim.obs_dim
        reward, terminated, truncated, realism, unrealistic, out_of_support, non_finite = packed[d:].tolist()
        info = {
            "realism": realism,
            "unrealistic": bool(unrealistic),
            "out_of_support": bool(out_of_support),
            "non_finite": bool(non_finite),
        }
        return self._cast_obs(packed[:d]), reward, bool(terminated), bool(truncated), info

    def _host_obs(self, obs: torch.Tensor) -> np.ndarray:
        return self._cast_obs(obs.detach().cpu().numpy())

    def _cast_obs(self, obs: np.ndarray) -> np.ndarray:
        # A fresh array every call (callers keep what we return), in the observation space's dtype.
        return np.array(obs, dtype=self.observation_space.dtype, copy=True)


def __getattr__(name: str) -> Any:
    # SimVectorEnv lives in its own module (it imports this one); this keeps `simgan.sim_env:SimVectorEnv` valid.
    if name == "SimVectorEnv":
        from simgan.sim_vector_env import SimVectorEnv

        return SimVectorEnv
    raise AttributeError(f"module 'simgan.sim_env' has no attribute {name!r}")
