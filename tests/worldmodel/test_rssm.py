"""RSSM world model: the WorldModel contract on tiny seeded models (vector, Discrete and image obs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

import worldmodel
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.interface import previous_actions
from worldmodel.rssm import RSSMConfig, RSSMWorldModel

OBS_DIM, ACT_DIM, N_ACTIONS, IMG = 3, 2, 3, 32


def _schema(kind: str) -> StoreSchema:
    if kind == "image":
        obs_space = spaces.Box(0, 255, (IMG, IMG, 3), np.uint8)
    else:
        obs_space = spaces.Box(-10.0, 10.0, (OBS_DIM,), np.float32)
    act_space = spaces.Box(-2.0, 2.0, (ACT_DIM,), np.float32) if kind == "box" else spaces.Discrete(N_ACTIONS)
    return StoreSchema.from_spaces(obs_space, act_space, dt=0.05)


def _normalization(kind: str) -> Normalization:
    obs = 0 if kind == "image" else OBS_DIM
    act = ACT_DIM if kind == "box" else 0
    return Normalization(
        obs_mean=[0.5] * obs, obs_std=[2.0] * obs, obs_min=[-5.0] * obs, obs_max=[6.0] * obs,
        action_mean=[0.0] * act, action_std=[1.0] * act, action_min=[-2.0] * act, action_max=[2.0] * act,
        reward_mean=-1.0, reward_std=0.5, reward_min=-3.0, reward_max=0.0,
        num_actions=0 if kind == "box" else N_ACTIONS,
    )


def _model(kind: str, latent: str = "categorical", seed: int = 0) -> RSSMWorldModel:
    torch.manual_seed(seed)
    config = RSSMConfig.preset("tiny")
    config.latent = latent
    return RSSMWorldModel(config, _schema(kind), _normalization(kind))


def _actions(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if kind == "box":
        return torch.rand(*shape, ACT_DIM, generator=gen) * 4 - 2
    return torch.randint(N_ACTIONS, shape, generator=gen)


def _batch(kind: str, b: int = 4, t: int = 12, seed: int = 0) -> Batch:
    """Windows of a damped oscillator driven by the actions (images: a bar whose height is the state)."""
    gen = torch.Generator().manual_seed(seed)
    action = _actions(kind, (b, t), gen)
    drive = action[..., 0] if kind == "box" else action.float() - 1.0
    phase = torch.rand(b, 1, generator=gen) * 6.28
    steps = torch.arange(t).float()
    x = torch.sin(phase + 0.3 * steps) + 0.1 * drive.cumsum(1)
    obs = torch.stack([x, torch.cos(phase + 0.3 * steps), 0.5 * x**2], -1) * 2.0 + 0.5
    image = None
    if kind == "image":
        rows = ((x.clamp(-1.5, 1.5) + 1.5) / 3.0 * (IMG - 1)).long()  # (B, T)
        grid = torch.arange(IMG).view(1, 1, IMG)
        bar = (grid <= rows.unsqueeze(-1)).to(torch.uint8) * 200  # (B, T, H)
        image = bar.view(b, t, IMG, 1, 1).expand(b, t, IMG, IMG, 3).contiguous()
        image[..., 1] = 40
        obs = torch.zeros(b, t, 0)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    terminated = torch.zeros(b, t, dtype=torch.bool)
    terminated[0, -1] = True
    is_last = terminated.clone()
    reward = -(x**2) - 0.5
    return Batch(obs=obs, action=action, reward=reward, terminated=terminated, is_first=is_first,
                 is_last=is_last, image=image)


def _history(kind: str, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = batch.image if kind == "image" else batch.obs
    return obs, previous_actions(batch.action, batch.is_first), batch.is_first


KINDS = ["box", "discrete", "image"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from threads, and on a shared CPU extra threads only spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_dtypes(kind: str, latent: str) -> None:
    model = _model(kind, latent).eval()
    b, h = 3, 5
    obs_shape = (IMG, IMG, 3) if kind == "image" else (OBS_DIM,)
    batch = _batch(kind, b=b, t=6)
    with torch.no_grad():
        state = model.initial_state(b)
        stoch = 4 * 4 if latent == "categorical" else 8
        assert state["deter"].shape == (b, 32) and state["stoch"].shape == (b, stoch)
        state = model.observe(state, *_history(kind, batch))
        assert set(state) == {"deter", "stoch", "horizon"} and all(v.shape[0] == b for v in state.values())
        gen = torch.Generator().manual_seed(1)
        state, pred = model.step(state, _actions(kind, (b,), gen), gen)
        assert pred.obs.shape == pred.obs_mean.shape == pred.obs_std.shape == (b, *obs_shape)
        assert pred.reward.shape == pred.terminated.shape == pred.uncertainty.shape == (b,)
        _, roll = model.imagine(state, _actions(kind, (b, h), gen), gen)
    assert roll.obs.shape == (b, h, *obs_shape) and roll.reward.shape == (b, h)
    for name in ("obs", "obs_mean", "obs_std", "reward", "terminated", "uncertainty"):
        value = getattr(roll, name)
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
    assert ((roll.terminated >= 0) & (roll.terminated <= 1)).all()
    assert (roll.obs_std > 0).all() and (roll.uncertainty >= 0).all()
    if kind == "image":
        assert roll.obs.min() >= 0 and roll.obs.max() <= 255
    else:  # clamp_plausible: within the recorded range [-5, 6] widened by 25% of its span
        assert roll.obs.min() >= -5 - 2.75 - 1e-4 and roll.obs.max() <= 6 + 2.75 + 1e-4


@pytest.mark.parametrize("kind,latent",
                         [("box", "gaussian"), ("discrete", "categorical"), ("image", "categorical")])
def test_loss_decreases(kind: str, latent: str) -> None:
    model = _model(kind, latent)
    batch = _batch(kind, b=8, t=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, metrics = model.loss(batch)
        assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in metrics.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert {"obs_nll", "obs_mse", "reward_mse", "termination_bce", "kl"} <= set(metrics)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1 * abs(np.mean(losses[:5])), losses


def test_gradients_reach_every_parameter() -> None:
    model = _model("box", "categorical")
    loss, _ = model.loss(_batch("box"))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_rollouts_are_deterministic(kind: str) -> None:
    model = _model(kind).eval()
    batch = _batch(kind, b=2, t=5)
    actions = _actions(kind, (2, 6), torch.Generator().manual_seed(3))
    with torch.no_grad():
        state = model.observe(model.initial_state(2), *_history(kind, batch))
        _, a = model.imagine(state, actions, torch.Generator().manual_seed(7))
        _, b = model.imagine(state, actions, torch.Generator().manual_seed(7))
        _, c = model.imagine(state, actions, torch.Generator().manual_seed(8))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward)
    assert not torch.equal(a.obs, c.obs)


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
@pytest.mark.parametrize("kind", ["box", "discrete"])
def test_observe_step_by_step_equals_whole_history(kind: str, latent: str) -> None:
    model = _model(kind, latent).eval()
    batch = _batch(kind, b=3, t=8)
    obs, act, first = _history(kind, batch)
    first = first.clone()
    first[1, 4] = True  # an episode start mid-history resets that row's belief
    with torch.no_grad():
        whole = model.observe(model.initial_state(3), obs, act, first)
        state = model.initial_state(3)
        for t in range(obs.shape[1]):
            state = model.observe(state, obs[:, t : t + 1], act[:, t : t + 1], first[:, t : t + 1])
        split = model.observe(model.observe(model.initial_state(3), obs[:, :4], act[:, :4], first[:, :4]),
                              obs[:, 4:], act[:, 4:], first[:, 4:])
        reset = model.observe(model.initial_state(1), obs[1:2, 4:], act[1:2, 4:], first[1:2, 4:])
    for key in whole:
        torch.testing.assert_close(state[key], whole[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(split[key], whole[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reset[key][0], whole[key][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["box", "image"])
def test_observe_then_imagine_equals_imagine_after_same_history(kind: str) -> None:
    model = _model(kind).eval()
    batch = _batch(kind, b=2, t=9)
    obs, act, first = _history(kind, batch)
    actions = _actions(kind, (2, 4), torch.Generator().manual_seed(5))
    with torch.no_grad():
        s1 = model.observe(model.initial_state(2), obs, act, first)
        _, p1 = model.imagine(s1, actions, torch.Generator().manual_seed(11))
        s2 = model.observe(model.observe(model.initial_state(2), obs[:, :5], act[:, :5], first[:, :5]),
                           obs[:, 5:], act[:, 5:], first[:, 5:])
        _, p2 = model.imagine(s2, actions, torch.Generator().manual_seed(11))
        # Imagining in two halves with one generator equals imagining at once.
        gen = torch.Generator().manual_seed(11)
        mid, q1 = model.imagine(s1, actions[:, :2], gen)
        _, q2 = model.imagine(mid, actions[:, 2:], gen)
    torch.testing.assert_close(p2.obs, p1.obs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([q1.obs, q2.obs], 1), p1.obs)


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, latent: str, tmp_path) -> None:
    model = _model(kind, latent)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, _ = model.loss(_batch(kind))  # one step so the weights differ from a fresh init
    loss.backward()
    opt.step()
    model.eval()
    path = model.save(str(tmp_path / "rssm.pt"))
    loaded = worldmodel.load(path)
    assert isinstance(loaded, RSSMWorldModel) and loaded.config == model.config
    batch = _batch(kind, b=2, t=6, seed=4)
    actions = _actions(kind, (2, 5), torch.Generator().manual_seed(2))
    outs = []
    for m in (model, loaded):
        with torch.no_grad():
            state = m.observe(m.initial_state(2), *_history(kind, batch))
            outs.append(m.imagine(state, actions, torch.Generator().manual_seed(9))[1])
    for name in ("obs", "obs_mean", "obs_std", "reward", "terminated", "uncertainty"):
        assert torch.equal(getattr(outs[0], name), getattr(outs[1], name)), name


def test_presets_and_config_errors() -> None:
    assert RSSMConfig.preset("small") == RSSMConfig()
    assert RSSMConfig.preset("medium").deter > RSSMConfig().deter > RSSMConfig.preset("tiny").deter
    with pytest.raises(ValueError, match="unknown preset"):
        RSSMConfig.preset("huge")
    config = RSSMConfig.preset("tiny")
    config.latent = "vq"
    with pytest.raises(ValueError, match="latent"):
        RSSMWorldModel(config, _schema("box"), _normalization("box"))
    odd = StoreSchema.from_spaces(spaces.Box(0, 255, (40, 40, 3), np.uint8), spaces.Discrete(2), dt=0.1)
    with pytest.raises(ValueError, match="divisible by 16"):
        RSSMWorldModel(RSSMConfig.preset("tiny"), odd, _normalization("discrete"))


def test_image_64x64_single_channel() -> None:
    image_space = spaces.Box(0, 255, (64, 64, 1), np.uint8)
    schema = StoreSchema.from_spaces(image_space, spaces.Discrete(N_ACTIONS), dt=0.1)
    model = RSSMWorldModel(RSSMConfig.preset("tiny"), schema, _normalization("discrete")).eval()
    with torch.no_grad():
        img = torch.randint(0, 256, (2, 3, 64, 64, 1), dtype=torch.uint8)
        state = model.observe(model.initial_state(2), img, torch.zeros(2, 3, dtype=torch.long),
                              torch.tensor([[True, False, False]] * 2))
        _, pred = model.step(state, torch.tensor([0, 2]), torch.Generator().manual_seed(0))
    assert pred.obs.shape == (2, 64, 64, 1) and math.isfinite(pred.uncertainty.sum().item())


def test_validation_loss_is_the_one_step_prediction_error_not_the_decoder_nll() -> None:
    """Early stopping, the best weights and the LR decay follow what an imagined step predicts. A decoder std
    that shrinks on the train split blows up the validation NLL while the predictions still improve (the zoo's
    tank kept epoch 0); the validation loss must not see the std, nor the first row of an episode (no prior)."""
    model = _model("box", "gaussian").eval()
    batch = _batch("box", b=6, t=10)
    with torch.no_grad():
        torch.manual_seed(1)  # the filter's posterior samples
        loss, metrics = model.loss(batch)
        assert torch.equal(loss, metrics["prior_mse"]) and float(loss) > 0
        last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias[OBS_DIM:] -= 20.0  # the decoder's std collapses to its floor: the NLL explodes
        torch.manual_seed(1)
        shrunk, shrunk_metrics = model.loss(batch)
        assert shrunk_metrics["obs_nll"] > 10 * metrics["obs_nll"]
        assert torch.allclose(shrunk, loss)
        obs = batch.obs.clone()
        obs[:, 0] += 100.0  # an episode's first row is filtered, never predicted
        torch.manual_seed(1)
        first_changed = model.loss(Batch(obs=obs, action=batch.action, reward=batch.reward,
                                         terminated=batch.terminated, is_first=batch.is_first,
                                         is_last=batch.is_last))[1]["prior_mse"]
    assert "prior_mse" not in model.train().loss(batch)[1]  # training pays for no extra decode
    # Scored, the first row would add (100 / std 2)² / 10 steps = 250; its embedding moves the later states only.
    assert float(first_changed) < 2 * float(loss)
