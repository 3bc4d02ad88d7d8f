"""Policy files (zip + the JSON naming its algorithm), behaviour policies, and the real-env return loop."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from policies import deterministic_policy, load_sb3, make_policy, read_policy_info, real_return, save_sb3


@pytest.fixture(scope="module")
def cartpole_agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained PPO and A2C agents on CartPole: their zips look alike, so only the JSON tells them apart."""
    from stable_baselines3 import A2C, PPO

    work = tmp_path_factory.mktemp("agents")
    env = gym.make("CartPole-v1")
    paths = {}
    for algo in (PPO, A2C):
        agent = algo("MlpPolicy", env, seed=0, device="cpu", policy_kwargs={"net_arch": [8]})
        paths[algo.__name__] = save_sb3(agent, work / f"{algo.__name__.lower()}.zip")
    return paths


def test_saved_policy_records_its_algorithm_and_spaces(cartpole_agents: dict[str, Path]) -> None:
    import stable_baselines3

    for name, path in cartpole_agents.items():
        info = json.loads(path.with_suffix(".json").read_text())
        assert info["algorithm"] == name and info["sb3_version"] == stable_baselines3.__version__
        assert info["action_space"] == {"type": "Discrete", "n": 2, "start": 0}
        assert info["observation_space"]["type"] == "Box" and info["observation_space"]["shape"] == [4]
        assert type(load_sb3(path)).__name__ == name


def test_policy_without_json_is_refused_with_what_is_expected(cartpole_agents: dict[str, Path],
                                                              tmp_path: Path) -> None:
    bare = tmp_path / "bare.zip"
    bare.write_bytes(cartpole_agents["PPO"].read_bytes())
    with pytest.raises(FileNotFoundError, match=r"bare\.zip: no bare\.json beside it; expected .*algorithm"):
        load_sb3(bare)
    with pytest.raises(FileNotFoundError, match="bare.json"):
        make_policy(str(bare), gym.make("CartPole-v1").action_space)
    (tmp_path / "bare.json").write_text(json.dumps({"algorithm": "PPO2"}))
    with pytest.raises(ValueError, match="bare.json: key 'algorithm' is 'PPO2'"):
        read_policy_info(bare)


def test_make_policy_checks_the_action_space(cartpole_agents: dict[str, Path]) -> None:
    policy = make_policy(str(cartpole_agents["PPO"]), gym.make("CartPole-v1").action_space)
    obs = np.zeros((3, 4), np.float32)
    expected, _ = load_sb3(cartpole_agents["PPO"]).predict(obs, deterministic=True)
    np.testing.assert_array_equal(policy(obs), expected)
    with pytest.raises(ValueError, match="returns actions in Discrete"):
        make_policy(str(cartpole_agents["PPO"]), gym.make("Pendulum-v1").action_space)


def test_real_return_takes_agents_and_batched_policies(cartpole_agents: dict[str, Path]) -> None:
    agent = load_sb3(cartpole_agents["A2C"])
    by_agent = real_return(agent, "CartPole-v1", 3, seed=7)
    assert by_agent == real_return(deterministic_policy(agent), "CartPole-v1", 3, seed=7)
    # The random policy of make_policy reproduces a hand-written loop (the demo's random baseline).
    env = gym.make("Pendulum-v1")
    env.action_space.seed(1000)
    returns = []
    for k in range(2):
        env.reset(seed=1000 + k)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total += float(r)
            done = term or trunc
        returns.append(total)
    random_policy = make_policy("random", gym.make("Pendulum-v1").action_space, seed=1000)
    assert real_return(random_policy, "Pendulum-v1", 2, seed=1000) == pytest.approx(float(np.mean(returns)), abs=0)


def test_agent_checkpoint_round_trips_training_state(tmp_path: Path) -> None:
    """save_agent / load_agent: weights, optimizer states, SAC's entropy coefficient, counters and the replay
    buffer come back (no pickle: safetensors, weights_only torch, npz)."""
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.env_util import make_vec_env

    from policies.checkpoint import buffer_path, load_agent, save_agent, train_state_path

    agent = SAC("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), seed=0, device="cpu", buffer_size=200,
                learning_starts=16, batch_size=8, policy_kwargs={"net_arch": [8]})
    agent.learn(40)
    path = tmp_path / "agent.zip"
    save_agent(agent, path)
    assert buffer_path(path).exists() and train_state_path(path).exists()
    back = load_agent(path, make_vec_env("Pendulum-v1", n_envs=2, seed=1))
    assert isinstance(back, SAC) and back.replay_buffer is not None and agent.replay_buffer is not None
    assert back.num_timesteps == agent.num_timesteps and back._n_updates == agent._n_updates
    assert back.replay_buffer.pos == agent.replay_buffer.pos
    np.testing.assert_array_equal(back.replay_buffer.observations, agent.replay_buffer.observations)
    np.testing.assert_array_equal(back.replay_buffer.rewards, agent.replay_buffer.rewards)
    assert back.log_ent_coef is not None and agent.log_ent_coef is not None
    assert torch.equal(back.log_ent_coef, agent.log_ent_coef)
    for name in ("actor.optimizer", "critic.optimizer", "ent_coef_optimizer"):
        a, b = agent.get_parameters()[name]["state"], back.get_parameters()[name]["state"]
        assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)
    obs = np.zeros((3, 3), np.float32)
    np.testing.assert_array_equal(back.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0])
    back.learn(8, reset_num_timesteps=False)  # and it trains on
