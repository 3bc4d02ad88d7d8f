"""`uncertainty: none | own | elites`: the fast own-member path imagines exactly what the elites path does."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_models import ensembles, one_thread, stores  # noqa: F401 - fixtures

from data_pipeline.errors import InputError
from envs.vector_env import WorldModelVectorEnv
from scenarios.rollout import imagine_block
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel, uncertainty_mode


def _rollout(model: EnsembleWorldModel, choice: str, members: torch.Tensor, steps: int = 6) -> list:
    gen = torch.Generator().manual_seed(3)
    state = {"obs": torch.randn(len(members), model.obs_dim, generator=torch.Generator().manual_seed(1)),
             "member": members, "horizon": torch.zeros(len(members), dtype=torch.long)}
    actions = torch.rand(steps, len(members), model.action_dim, generator=torch.Generator().manual_seed(2)) * 4 - 2
    out = []
    with torch.inference_mode(), uncertainty_mode(model, choice):  # type: ignore[arg-type]
        for k in range(steps):
            state, pred = model.step(state, actions[k], gen)
            out.append(pred)
    return out


@pytest.mark.parametrize("choice", ["own", "none"])
def test_own_member_path_matches_elites(stores: dict, choice: str) -> None:  # noqa: F811
    """Same seed, same samples: each trajectory's own member run alone gives what running all elites gave,
    also with uneven member groups and a member that is no longer an elite (it falls back to the first)."""
    store = stores["pendulum"]
    from data_pipeline.windows import normalization_for

    torch.manual_seed(0)
    model = EnsembleWorldModel(EnsembleConfig(members=5, elites=3, hidden=16, layers=2), store.schema,
                               normalization_for(store, range(store.num_episodes))).eval()
    model.elite_idx.copy_(torch.tensor([4, 1, 2]))
    members = torch.tensor([4, 1, 1, 2, 4, 4, 4, 0, 2, 1, 4])  # 0: not an elite
    fast, slow = _rollout(model, choice, members), _rollout(model, "elites", members)
    assert model.uncertainty == "elites"  # restored after the block
    for f, s in zip(fast, slow, strict=True):
        for name in ("obs", "obs_mean", "reward", "terminated"):
            torch.testing.assert_close(getattr(f, name), getattr(s, name), rtol=1e-5, atol=1e-5)
        assert (s.uncertainty > 0).all() and (f.uncertainty == 0).all()
    if choice == "own":  # the own member's aleatoric std: at most the elites' total std
        for f, s in zip(fast, slow, strict=True):
            assert (f.obs_std > 0).all() and (f.obs_std <= s.obs_std + 1e-6).all()
    else:
        assert all((f.obs_std == 0).all() for f in fast)


def test_vector_env_uncertainty_option(stores: dict, ensembles: dict) -> None:  # noqa: F811
    """Observations and rewards do not depend on the choice; the info reports what was asked for."""
    store, model = stores["pendulum"], ensembles["pendulum"]
    runs = {}
    for choice in ("none", "own", "elites"):
        env = WorldModelVectorEnv(8, model, store, uncertainty=choice, max_episode_steps=None)
        env.reset(seed=5)
        runs[choice] = [env.step(np.full((8, 1), 0.5 * k - 1, np.float32)) for k in range(4)]
    assert model.uncertainty == "elites"  # the env leaves a shared model's setting alone
    for k in range(4):
        for choice in ("none", "own"):
            np.testing.assert_allclose(runs[choice][k][0], runs["elites"][k][0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(runs[choice][k][1], runs["elites"][k][1], rtol=1e-5, atol=1e-5)
        assert (runs["elites"][k][4]["uncertainty"] > 0).all()
        assert (runs["own"][k][4]["uncertainty"] == 0).all() and (runs["own"][k][4]["obs_std"] > 0).all()
        assert "obs_std" not in runs["none"][k][4]


def test_env_default_and_penalty(stores: dict, ensembles: dict) -> None:  # noqa: F811
    """The env's default runs the own member only; a MOPO penalty gets the elites' disagreement, and a
    penalty with an uncertainty that has none is refused."""
    store, model = stores["pendulum"], ensembles["pendulum"]
    assert WorldModelVectorEnv(2, model, store).core.uncertainty == "own"
    assert WorldModelVectorEnv(2, model, store, uncertainty_penalty=1.0).core.uncertainty == "elites"
    with pytest.raises(InputError, match="uncertainty_penalty"):
        WorldModelVectorEnv(2, model, store, uncertainty_penalty=1.0, uncertainty="none")
    with pytest.raises(InputError, match="uncertainty="):
        gym.make("WorldModel-v0", model=model, store=store, uncertainty="some")


def test_scenario_rollout_uncertainty(stores: dict, ensembles: dict) -> None:  # noqa: F811
    """A plain rollout asks for no uncertainty: the same futures, zero uncertainty."""
    model = ensembles["pendulum"]
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3, 4, model.obs_dim)).astype(np.float32)
    prev = rng.uniform(-1, 1, (3, 4, 1)).astype(np.float32)
    first = np.zeros((3, 4), bool)
    actions = rng.uniform(-2, 2, (3, 5, 1)).astype(np.float32)
    full = imagine_block(model, obs, prev, first, actions, samples=4, seed=7)
    fast = imagine_block(model, obs, prev, first, actions, samples=4, seed=7, uncertainty="none")
    np.testing.assert_allclose(fast["obs"], full["obs"], rtol=1e-5, atol=1e-5)
    assert (full["uncertainty"] > 0).all() and (fast["uncertainty"] == 0).all()


def test_the_fast_path_applies_the_calibration(stores: dict) -> None:  # noqa: F811
    """A calibrated ensemble's cheap path narrows each trajectory's noise around its own member's mean."""
    store = stores["pendulum"]
    from data_pipeline.windows import normalization_for

    torch.manual_seed(0)
    model = EnsembleWorldModel(EnsembleConfig(members=3, elites=2, hidden=16, layers=2), store.schema,
                               normalization_for(store, range(store.num_episodes))).eval()
    members = torch.zeros(256, dtype=torch.long)  # one member: the spread is its noise alone
    spreads = []
    for scale in (1.0, 0.1):
        model.set_calibration(torch.full((1, model.obs_dim), scale))
        state = {"obs": torch.zeros(256, model.obs_dim), "member": members,
                 "horizon": torch.zeros(256, dtype=torch.long)}
        with torch.inference_mode(), uncertainty_mode(model, "own"):
            _, pred = model.step(state, torch.zeros(256, model.action_dim), torch.Generator().manual_seed(0))
        spreads.append(pred.obs.std(0))
    assert bool((spreads[1] < 0.3 * spreads[0]).all()), spreads
