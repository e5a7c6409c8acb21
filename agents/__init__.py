"""RL agents and planners that act in any gymnasium env, real or learned: SAC, PPO, CEM-MPC, random.

``agents`` sees only gymnasium spaces and envs; it imports neither ``simgan`` nor ``envs``.

    from agents import SACConfig, train_sac, evaluate_policy, load_agent
    result = train_sac(gymnasium.make("Pendulum-v1"), SACConfig(total_steps=5000))
    result.agent.save("runs/sac")
    agent = load_agent("runs/sac", observation_space=env.observation_space, action_space=env.action_space)
    print(evaluate_policy(agent, env, episodes=10))
"""

from agents.base import BasePolicy, Policy, SeededPolicy, TrainResult, load_agent
from agents.evaluate import EvalResult, combine_results, evaluate_policy
from agents.mpc import MPCPolicy
from agents.ppo import PPOAgent, PPOConfig, train_ppo
from agents.random import RandomPolicy
from agents.sac import SACAgent, SACConfig, train_sac
from agents.serialization import AgentLoadError, SpaceMismatchError

__all__ = [
    "AgentLoadError",
    "BasePolicy",
    "EvalResult",
    "MPCPolicy",
    "PPOAgent",
    "PPOConfig",
    "Policy",
    "RandomPolicy",
    "SACAgent",
    "SACConfig",
    "SeededPolicy",
    "SpaceMismatchError",
    "TrainResult",
    "combine_results",
    "evaluate_policy",
    "load_agent",
    "train_ppo",
    "train_sac",
]
