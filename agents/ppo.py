"""Proximal Policy Optimisation for Discrete and Box actions on vector envs, CleanRL ``ppo.py`` style.

GAE advantages, clipped surrogate objective, (clipped) value loss, entropy bonus, optional running observation
normalisation. :func:`train_ppo` is the whole loop, top to bottom.

Autoreset (gymnasium 1.x): in NEXT_STEP mode the step after an episode ended is a reset step; it is stored but
masked out of the loss, and its value V(final obs) bootstraps truncated episodes for free. In SAME_STEP mode the
true final obs comes from ``infos["final_obs"]`` and truncated rewards get ``gamma * V(final obs)`` added.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn
from tqdm.auto import tqdm

from agents.base import (
    EpisodeTracker,
    NetworkAgent,
    TrainResult,
    as_vector_env,
    autoreset_mode,
    hparams_table,
    like_env,
    real_next_obs,
    to_numpy,
)
from agents.serialization import AgentFiles


@dataclass
class PPOConfig:
    total_steps: int = field(
        default=100_000, metadata={"help": "env steps to collect (summed over sub-envs)"}
    )
    num_steps: int = field(default=128, metadata={"help": "rollout length per sub-env between updates"})
    learning_rate: float = field(default=2.5e-4, metadata={"help": "Adam learning rate"})
    anneal_lr: bool = field(default=True, metadata={"help": "decay the learning rate linearly to 0"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda"})
    num_minibatches: int = field(default=4, metadata={"help": "minibatches per epoch"})
    update_epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    norm_adv: bool = field(default=True, metadata={"help": "normalise advantages per minibatch"})
    clip_coef: float = field(default=0.2, metadata={"help": "surrogate clipping coefficient"})
    clip_vloss: bool = field(default=True, metadata={"help": "clip the value loss like the policy"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy bonus coefficient"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient norm clip"})
    target_kl: float | None = field(default=None, metadata={"help": "stop the epochs early above this KL"})
    normalize_obs: bool = field(
        default=False, metadata={"help": "running mean/std observation normalisation"}
    )
    hidden_size: int = field(default=64, metadata={"help": "width of the 2 tanh hidden layers"})
    seed: int = field(default=1, metadata={"help": "seeds networks, env resets, sampling and minibatches"})


def _layer(n_in: int, n_out: int, std: float = math.sqrt(2)) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class RunningMeanStd(nn.Module):
    """Running mean/variance of observations (parallel-variance update); normalises to clipped z-scores."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, batch: torch.Tensor) -> None:
        """Fold in a batch: N x dim."""
        batch = batch.to(torch.float64)
        n = batch.shape[0]
        batch_mean, batch_var = batch.mean(0), batch.var(0, unbiased=False)
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var.copy_(
            (self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total) / total
        )
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.mean.float()) / torch.sqrt(self.var.float() + 1e-8)).clamp(-10.0, 10.0)


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the policy (categorical logits or Gaussian mean + state-free log std) and V(s)."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        n_out = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.critic = nn.Sequential(
            _layer(obs_dim, hidden), nn.Tanh(), _layer(hidden, hidden), nn.Tanh(), _layer(hidden, 1, 1.0)
        )
        self.actor = nn.Sequential(
            _layer(obs_dim, hidden), nn.Tanh(), _layer(hidden, hidden), nn.Tanh(), _layer(hidden, n_out, 0.01)
        )
        self.log_std = nn.Parameter(torch.zeros(n_out))  # unused for Discrete

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s): B x obs_dim -> B."""
        return self.critic(obs).squeeze(-1)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        out = self.actor(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Normal(out, self.log_std.expand_as(out).exp())

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator | None, deterministic: bool = False
    ) -> torch.Tensor:
        """Actions B (long, 0-based) or B x act_dim (unclipped) from an explicit generator."""
        dist = self.distribution(obs)
        if self.discrete:
            if deterministic:
                return dist.probs.argmax(-1)
            return torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
        if deterministic:
            return dist.mean
        noise = torch.randn(dist.mean.shape, generator=generator, device=obs.device)
        return dist.mean + dist.stddev * noise

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log_prob B, entropy B, value B) of given actions."""
        dist = self.distribution(obs)
        log_prob, entropy = dist.log_prob(actions), dist.entropy()
        if not self.discrete:
            log_prob, entropy = log_prob.sum(-1), entropy.sum(-1)
        return log_prob, entropy, self.value(obs)


class PPOAgent(NetworkAgent):
    """A PPO actor-critic (+ its observation normaliser)."""

    algo = "ppo"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: PPOConfig | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__(observation_space, action_space, device)
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError(f"PPO: expected a Box observation space, got {observation_space}")
        self.config = config or PPOConfig()
        obs_dim = int(np.prod(observation_space.shape))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.model = ActorCritic(obs_dim, action_space, self.config.hidden_size)
        self.obs_rms = RunningMeanStd(obs_dim)
        self.model.to(self.device)
        self.obs_rms.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_rms(obs) if self.config.normalize_obs else obs

    def _act_batch(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        actions = self.model.sample(self.normalize(obs), self.generator, deterministic)
        return actions + self.action_space.start if self.is_discrete else actions

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"obs_rms.{k}": v for k, v in self.obs_rms.state_dict().items()})
        return tensors

    @classmethod
    def from_files(cls, files: AgentFiles, device: str | torch.device = "cpu") -> PPOAgent:
        agent = cls(files.observation_space, files.action_space, cls.config_from(files, PPOConfig), device)
        cls.load_module(agent.model, files, "model")
        cls.load_module(agent.obs_rms, files, "obs_rms")
        return agent


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    next_nonterminal: torch.Tensor,
    episode_continues: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> torch.Tensor:
    """Generalised advantage estimates, T x N.

    Args:
        rewards, values: T x N.
        next_value: N, V of the observation after the last step.
        next_nonterminal: T x N, 0 where the next value must not be bootstrapped (terminated).
        episode_continues: T x N, 0 where the episode ended at this step (the GAE sum stops there).
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * next_nonterminal[t] - values[t]
        last = delta + gamma * gae_lambda * episode_continues[t] * last
        advantages[t] = last
    return advantages


def ppo_loss(
    model: ActorCritic, batch: dict[str, torch.Tensor], cfg: PPOConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO loss on one minibatch (obs, actions, logprobs, advantages, returns, values; all B-leading)."""
    new_log_prob, entropy, new_value = model.evaluate(batch["obs"], batch["actions"])
    log_ratio = new_log_prob - batch["logprobs"]
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
    advantages = batch["advantages"]
    if cfg.norm_adv and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(
        -advantages * ratio, -advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
    ).mean()
    if cfg.clip_vloss:
        v_clipped = batch["values"] + torch.clamp(new_value - batch["values"], -cfg.clip_coef, cfg.clip_coef)
        v_loss = (
            0.5 * torch.max((new_value - batch["returns"]) ** 2, (v_clipped - batch["returns"]) ** 2).mean()
        )
    else:
        v_loss = 0.5 * ((new_value - batch["returns"]) ** 2).mean()
    entropy_loss = entropy.mean()
    loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
    stats = {
        "policy_loss": pg_loss.item(),
        "value_loss": v_loss.item(),
        "entropy": entropy_loss.item(),
        "approx_kl": approx_kl.item(),
        "clipfrac": clipfrac.item(),
    }
    return loss, stats


def train_ppo(
    env: gym.Env | gym.vector.VectorEnv,
    config: PPOConfig | None = None,
    *,
    agent: PPOAgent | None = None,
    device: str | torch.device = "cpu",
    log_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[PPOAgent, int], None] | None = None,
) -> TrainResult:
    """Train PPO on ``env`` (a single env or a VectorEnv) for about ``config.total_steps`` env steps.

    Args: as :func:`agents.sac.train_sac`; ``callback(agent, env_steps)`` is called after every PPO update.
    """
    envs = as_vector_env(env)
    mode = autoreset_mode(envs)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if agent is None:
        agent = PPOAgent(obs_space, act_space, config, device=device)
    else:
        agent.check_spaces(obs_space, act_space)
        if config is not None:
            agent.config = config
    cfg, model, device = agent.config, agent.model, agent.device
    n_envs, n_steps = envs.num_envs, cfg.num_steps
    obs_dim = int(np.prod(obs_space.shape))
    discrete = isinstance(act_space, gym.spaces.Discrete)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    num_iterations = max(1, math.ceil(cfg.total_steps / (n_envs * n_steps)))
    if not discrete:
        low = torch.as_tensor(act_space.low, dtype=torch.float32, device=device)
        high = torch.as_tensor(act_space.high, dtype=torch.float32, device=device)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
        writer.add_text("hyperparameters", hparams_table({**dataclasses.asdict(cfg), "num_envs": n_envs}))

    # Rollout storage, T x N (x dim); observations are stored normalised, as the policy saw them.
    obs_buf = torch.zeros(n_steps, n_envs, obs_dim, device=device)
    act_shape = () if discrete else act_space.shape
    actions_buf = torch.zeros(
        n_steps, n_envs, *act_shape, device=device, dtype=torch.long if discrete else torch.float32
    )
    logprobs, rewards, values = (torch.zeros(n_steps, n_envs, device=device) for _ in range(3))
    next_nonterminal, episode_continues, valid_buf = (
        torch.zeros(n_steps, n_envs, device=device) for _ in range(3)
    )

    tracker = EpisodeTracker(n_envs)
    result = TrainResult(agent=agent, episode_returns=tracker.returns, episode_steps=[], losses=[])
    obs, _ = envs.reset(seed=cfg.seed)
    needs_reset = np.zeros(n_envs, dtype=bool)
    global_step, start = 0, time.perf_counter()
    bar = tqdm(
        total=num_iterations * n_envs * n_steps,
        desc="ppo",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    for iteration in range(1, num_iterations + 1):
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - (iteration - 1.0) / num_iterations)

        # ---- rollout: n_steps vector steps ----------------------------------------------------------------------
        for step in range(n_steps):
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(n_envs, obs_dim)
            if cfg.normalize_obs:
                agent.obs_rms.update(obs_t)
            obs_buf[step] = agent.normalize(obs_t)
            with torch.no_grad():
                action = model.sample(obs_buf[step], generator)
                logprobs[step], _, values[step] = model.evaluate(obs_buf[step], action)
            actions_buf[step] = action
            env_action = action + act_space.start if discrete else torch.max(torch.min(action, high), low)
            next_obs, reward, terminated, truncated, infos = envs.step(like_env(env_action, obs))

            reward_t = torch.as_tensor(to_numpy(reward), dtype=torch.float32, device=device)
            term_np = to_numpy(terminated).astype(bool)
            done_np = term_np | to_numpy(truncated).astype(bool)
            valid = ~needs_reset if mode == AutoresetMode.NEXT_STEP else np.ones(n_envs, dtype=bool)
            if mode == AutoresetMode.SAME_STEP:
                # The next obs of a finished sub-env is already its reset obs: bootstrap truncation here.
                cut = done_np & ~term_np
                if cut.any():
                    final = real_next_obs(
                        torch.as_tensor(next_obs, dtype=torch.float32, device=device), infos
                    )
                    with torch.no_grad():
                        final_values = model.value(agent.normalize(final))
                    reward_t = reward_t + cfg.gamma * final_values * torch.as_tensor(cut, device=device)
                next_nonterminal[step] = torch.as_tensor(~done_np, dtype=torch.float32, device=device)
            else:
                next_nonterminal[step] = torch.as_tensor(~term_np, dtype=torch.float32, device=device)
            rewards[step] = reward_t
            episode_continues[step] = torch.as_tensor(~done_np, dtype=torch.float32, device=device)
            valid_buf[step] = torch.as_tensor(valid, dtype=torch.float32, device=device)

            global_step += int(valid.sum())
            for episode_return, episode_length in tracker.update(
                to_numpy(reward).astype(np.float64), done_np, valid
            ):
                result.episode_steps.append(global_step)
                if writer is not None:
                    writer.add_scalar("charts/episodic_return", episode_return, global_step)
                    writer.add_scalar("charts/episodic_length", episode_length, global_step)
            needs_reset = done_np if mode == AutoresetMode.NEXT_STEP else needs_reset
            obs = next_obs
        bar.update(n_envs * n_steps)
        if tracker.returns:
            bar.set_postfix(ret=f"{np.mean(tracker.returns[-10:]):.1f}", refresh=False)

        # ---- advantages ---------------------------------------------------------------------------------------------
        with torch.no_grad():
            last_obs = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(n_envs, obs_dim)
            next_value = model.value(agent.normalize(last_obs))
            advantages = compute_gae(
                rewards, values, next_value, next_nonterminal, episode_continues, cfg.gamma, cfg.gae_lambda
            )
            returns = advantages + values

        # ---- optimise on the valid transitions (reset steps are masked out) ------------------------------------------
        keep = valid_buf.reshape(-1).bool()
        flat = {
            "obs": obs_buf.reshape(-1, obs_dim)[keep],
            "actions": actions_buf.reshape(-1, *act_shape)[keep],
            "logprobs": logprobs.reshape(-1)[keep],
            "advantages": advantages.reshape(-1)[keep],
            "returns": returns.reshape(-1)[keep],
            "values": values.reshape(-1)[keep],
        }
        n_valid = len(flat["obs"])
        minibatch = max(1, math.ceil(n_valid / cfg.num_minibatches))
        stats: dict[str, float] = {}
        for _ in range(cfg.update_epochs):
            order = torch.randperm(n_valid, generator=generator, device=device)
            for begin in range(0, n_valid, minibatch):
                index = order[begin : begin + minibatch]
                loss, stats = ppo_loss(model, {k: v[index] for k, v in flat.items()}, cfg)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
            if cfg.target_kl is not None and stats["approx_kl"] > cfg.target_kl:
                break
        y_pred, y_true = flat["values"], flat["returns"]
        var_y = torch.var(y_true).item() if n_valid > 1 else 0.0
        stats["explained_variance"] = (
            float("nan") if var_y == 0 else 1.0 - torch.var(y_true - y_pred).item() / var_y
        )
        result.losses.append({"step": float(global_step), **stats})
        if writer is not None:
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            for name, value in stats.items():
                writer.add_scalar(f"losses/{name}", value, global_step)
            writer.add_scalar("charts/SPS", global_step / max(time.perf_counter() - start, 1e-9), global_step)
        if callback is not None:
            callback(agent, global_step)
    bar.close()
    if writer is not None:
        writer.close()
    return result
