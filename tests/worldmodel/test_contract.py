"""The WorldModel contract, the same tests for every kind in `MODEL_KINDS` (a new kind is tested here
without a line added): interface shapes, save/load round trip, filtering step by step equals filtering
the whole history, seeded determinism, and the model file's config checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

import worldmodel
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.base import ModelBase
from worldmodel.interface import WorldModel, previous_actions
from worldmodel.kinds import MODEL_KINDS, ConfigError, build_model, resolve_config

OBS_DIM, ACT_DIM, N_ACTIONS = 3, 2, 3
KINDS = sorted(MODEL_KINDS)
KIND_FIELDS: dict[str, dict[str, Any]] = {"hybrid": {"prior": "examples.priors.pendulum:PendulumPrior"}}
"""Fields a kind cannot do without (the hybrid model's physics prior: 3 observation channels, as here)."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads on a shared CPU
    yield
    torch.set_num_threads(threads)


def _schema(actions: str) -> StoreSchema:
    obs_space = spaces.Box(-10.0, 10.0, (OBS_DIM,), np.float32)
    act_space = spaces.Box(-2.0, 2.0, (ACT_DIM,), np.float32) if actions == "box" else spaces.Discrete(N_ACTIONS)
    return StoreSchema.from_spaces(obs_space, act_space, dt=0.05)


def _normalization(actions: str) -> Normalization:
    act = ACT_DIM if actions == "box" else 0
    return Normalization(
        obs_mean=[0.5] * OBS_DIM, obs_std=[2.0] * OBS_DIM, obs_min=[-5.0] * OBS_DIM, obs_max=[6.0] * OBS_DIM,
        action_mean=[0.0] * act, action_std=[1.0] * act, action_min=[-2.0] * act, action_max=[2.0] * act,
        reward_mean=-1.0, reward_std=0.5, reward_min=-3.0, reward_max=0.0,
        num_actions=0 if actions == "box" else N_ACTIONS,
    )


def _model(kind: str, actions: str = "box", **fields: Any) -> ModelBase[Any]:
    torch.manual_seed(0)
    config = resolve_config(kind, {"preset": "tiny", **KIND_FIELDS.get(kind, {}), **fields})
    return build_model(kind, config, _schema(actions), _normalization(actions)).eval()


def _actions(actions: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if actions == "box":
        return torch.rand(*shape, ACT_DIM, generator=gen) * 4 - 2
    return torch.randint(N_ACTIONS, shape, generator=gen)


def _history(actions: str, b: int = 3, t: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Observations (B, T, D), the action before each, and is_first with a reset in the middle of row 0."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, t, OBS_DIM, generator=gen) * 2 + 0.5
    action = _actions(actions, (b, t), gen)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[0, 3] = True
    return obs, previous_actions(action, is_first), is_first


@pytest.mark.parametrize("actions", ["box", "discrete"])
@pytest.mark.parametrize("kind", KINDS)
def test_interface_shapes_and_declared_capabilities(kind: str, actions: str) -> None:
    model = _model(kind, actions)
    assert isinstance(model, WorldModel)
    assert model.model_type == kind
    assert isinstance(model.markov, bool) and isinstance(model.supports_member_resampling, bool)
    b, h = 3, 4
    state = model.observe(model.initial_state(b), *_history(actions, b))
    assert all(v.shape[0] == b for v in state.values())
    future = _actions(actions, (b, h), torch.Generator().manual_seed(1))
    with torch.no_grad():
        one_state, one = model.step(state, future[:, 0], torch.Generator().manual_seed(2))
        _, pred = model.imagine(state, future, torch.Generator().manual_seed(2))
    assert set(one_state) == set(state)
    assert one.obs.shape == one.obs_mean.shape == one.obs_std.shape == (b, OBS_DIM)
    assert one.reward.shape == one.terminated.shape == one.uncertainty.shape == (b,)
    assert pred.obs.shape == (b, h, OBS_DIM) and pred.reward.shape == (b, h)
    assert torch.equal(pred.obs[:, 0], one.obs), "imagine's first step is step"
    assert bool(((pred.terminated >= 0) & (pred.terminated <= 1)).all()) and bool((pred.obs_std >= 0).all())
    # Plausibility: within the declared bounds of the observation space, Box(-10, 10) (contract 3).
    assert bool((pred.obs <= 10.0).all()) and bool((pred.obs >= -10.0).all())


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_imagines_identically(kind: str, tmp_path: Path) -> None:
    model = _model(kind)
    path = model.save(str(tmp_path / "model.pt"))
    loaded = worldmodel.load(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    obs, prev, is_first = _history("box")
    future = _actions("box", (3, 5), torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, a = model.imagine(model.observe(model.initial_state(3), obs, prev, is_first), future,
                             torch.Generator().manual_seed(5))
        _, b = loaded.imagine(loaded.observe(loaded.initial_state(3), obs, prev, is_first), future,
                              torch.Generator().manual_seed(5))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward) and torch.equal(a.obs_std, b.obs_std)


@pytest.mark.parametrize("actions", ["box", "discrete"])
@pytest.mark.parametrize("kind", KINDS)
def test_filtering_step_by_step_equals_the_whole_history(kind: str, actions: str) -> None:
    model = _model(kind, actions)
    obs, prev, is_first = _history(actions, t=7)
    with torch.no_grad():
        whole = model.observe(model.initial_state(3), obs, prev, is_first)
        state = model.initial_state(3)
        for t in range(obs.shape[1]):
            state = model.observe(state, obs[:, t : t + 1], prev[:, t : t + 1], is_first[:, t : t + 1])
    assert set(whole) == set(state)
    for key in whole:
        torch.testing.assert_close(state[key], whole[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_rollouts_are_deterministic_and_seeds_differ(kind: str) -> None:
    model = _model(kind)
    obs, prev, is_first = _history("box")
    future = _actions("box", (3, 5), torch.Generator().manual_seed(4))

    def rollout(seed: int) -> torch.Tensor:
        with torch.no_grad():
            state = model.observe(model.initial_state(3), obs, prev, is_first)
            return model.imagine(state, future, torch.Generator().manual_seed(seed))[1].obs

    assert torch.equal(rollout(7), rollout(7))
    assert not torch.equal(rollout(7), rollout(8))


@pytest.mark.parametrize("kind", KINDS)
def test_loss_is_finite_with_metrics(kind: str) -> None:
    model = _model(kind).train()
    gen = torch.Generator().manual_seed(0)
    b, t = 4, 8
    obs = torch.randn(b, t, OBS_DIM, generator=gen)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    batch = Batch(obs=obs, action=_actions("box", (b, t), gen), reward=torch.randn(b, t, generator=gen),
                  terminated=torch.zeros(b, t, dtype=torch.bool), is_first=is_first,
                  is_last=torch.zeros(b, t, dtype=torch.bool))
    loss, metrics = model.loss(batch)
    assert loss.dim() == 0 and bool(torch.isfinite(loss)) and metrics


def test_diffusion_is_markov_with_one_observation_of_history() -> None:
    assert _model("diffusion", history=1).markov
    assert not _model("diffusion", history=2).markov


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_config_key_in_a_model_file_is_an_error_naming_it(kind: str, tmp_path: Path) -> None:
    data = _model(kind).checkpoint_dict()
    data["config"] = json.dumps({**json.loads(data["config"]), "hiden": 3})
    torch.save(data, tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"config\.hiden.*expected some of \["):
        worldmodel.load(str(tmp_path / "model.pt"))


@pytest.mark.parametrize("kind", KINDS)
def test_config_from_user_data_preset_then_fields(kind: str) -> None:
    _, config_cls = MODEL_KINDS[kind]
    tiny = config_cls.preset("tiny")
    assert resolve_config(kind, {"preset": "tiny"}) == tiny
    assert resolve_config(kind, None) == config_cls()
    assert resolve_config(kind, {"preset": "tiny", "plausible_margin": 0.5}) == replace(tiny, plausible_margin=0.5)
    with pytest.raises(ConfigError, match=r"model\.config\.plausible_margn.*expected some of .*'plausible_margin'"):
        resolve_config(kind, {"plausible_margn": 0.5})
    with pytest.raises(ConfigError, match=r"model\.config\.plausible_margin"):
        resolve_config(kind, {"plausible_margin": "wide"})
    with pytest.raises(ConfigError, match=r"model\.config\.preset"):
        resolve_config(kind, {"preset": "huge"})


@pytest.mark.parametrize("kind", KINDS)
def test_resample_members_keeps_the_state_shape(kind: str) -> None:
    model = _model(kind)
    state = model.observe(model.initial_state(3), *_history("box"))
    resampled = model.resample_members(state, torch.Generator().manual_seed(0))
    assert {k: v.shape for k, v in resampled.items()} == {k: v.shape for k, v in state.items()}
    if not model.supports_member_resampling:
        assert resampled is state
