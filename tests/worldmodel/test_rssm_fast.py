"""RSSM imagination pays only for what is asked (issue 18): `uncertainty` choices, the sampler, calibration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_rssm import _actions, _batch, _history, _model

from worldmodel.ensemble import uncertainty_mode

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rollout(model, kind: str, mode: str, seed: int = 7, h: int = 4):
    batch = _batch(kind, b=3, t=5)
    actions = _actions(kind, (3, h), torch.Generator().manual_seed(3))
    with torch.no_grad(), uncertainty_mode(model, mode):
        state = model.observe(model.initial_state(3), *_history(kind, batch))
        return model.imagine(state, actions, torch.Generator().manual_seed(seed))[1]


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
@pytest.mark.parametrize("kind", ["box", "image"])
def test_uncertainty_choices_share_the_trajectory(kind: str, latent: str) -> None:
    model = _model(kind, latent).eval()
    assert model.uncertainty == "elites"  # the default keeps the spread samples
    elites, own, none = (_rollout(model, kind, mode) for mode in ("elites", "own", "none"))
    # The same seed gives the same trajectory (up to float rounding: a convolution's result depends slightly
    # on its batch size, and "elites" decodes K times the rows).
    for name in ("obs", "obs_mean", "reward", "terminated"):
        torch.testing.assert_close(getattr(own, name), getattr(elites, name), atol=1e-4, rtol=1e-5, msg=name)
        torch.testing.assert_close(getattr(none, name), getattr(elites, name), atol=1e-4, rtol=1e-5, msg=name)
    assert (elites.uncertainty > 0).all()
    assert (own.uncertainty == 0).all() and (none.uncertainty == 0).all()
    # "own" reports the decoder's std alone, "elites" adds the spread of the latent samples, "none" nothing.
    assert (own.obs_std > 0).all() and (elites.obs_std >= own.obs_std * (1 - 1e-5)).all()
    assert (elites.obs_std > own.obs_std * (1 + 1e-4)).any()
    assert (none.obs_std == 0).all()


def test_own_and_none_decode_only_the_trajectory_sample() -> None:
    model = _model("box").eval()
    rows: list[int] = []
    model.decoder[-1].register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    for mode in ("elites", "own", "none"):
        rows.clear()
        _rollout(model, "box", mode, h=2)
        per_step = model.config.uncertainty_samples * 3 if mode == "elites" else 3
        assert rows == [per_step, per_step], (mode, rows)


@pytest.mark.parametrize("kind", ["box", "image"])
def test_inference_step_equals_the_differentiable_step(kind: str) -> None:
    """Without gradients, categorical one-hots enter the heads as picked weight columns instead of a matmul;
    the predictions and the next state are those of the differentiable path (which policies may train through)."""
    model = _model(kind).eval()
    batch = _batch(kind, b=3, t=5)
    action = _actions(kind, (3,), torch.Generator().manual_seed(3))
    with torch.no_grad():
        state = model.observe(model.initial_state(3), *_history(kind, batch))
        fast = model.step(state, action, torch.Generator().manual_seed(5))
    with torch.enable_grad():
        slow = model.step(state, action, torch.Generator().manual_seed(5))
    for key in fast[0]:
        torch.testing.assert_close(fast[0][key], slow[0][key].detach(), msg=key)
    for name in ("obs", "obs_mean", "obs_std", "reward", "terminated", "uncertainty"):
        torch.testing.assert_close(getattr(fast[1], name), getattr(slow[1], name).detach(), atol=1e-4, rtol=1e-5,
                                   msg=name)
    assert slow[1].obs.requires_grad  # the straight-through path still carries gradients


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
def test_imagined_latents_follow_the_prior(latent: str) -> None:
    """The sampler draws from the prior: class frequencies (categorical) or moments (Gaussian) over many
    trajectories from one state match the prior's probabilities, for the trajectory and every spread sample."""
    model = _model("box", latent, seed=2).eval()
    n = 20000
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        state = model.observe(model.initial_state(1), *[x[:1] for x in _history("box", _batch("box", b=1, t=4))])
        state = {k: v.expand(n, *v.shape[1:]) for k, v in state.items()}
        action = torch.full((n, 2), 0.5)
        deter, prior = model._img_step(state["deter"][:1], state["stoch"][:1], model.units.encode_action(action[:1]))
        noise = model._step_noise(n, 4, gen, prior)  # (K, N, V): the trajectory's row and 3 spread rows
        samples = model._sample(prior.expand(n, -1).unsqueeze(0).expand(4, -1, -1), noise)
        next_state, _ = model.step(state, action, torch.Generator().manual_seed(1))
    c = model.config
    if latent == "categorical":
        probs = prior.exp().view(c.categories, c.classes)
        for freq in [*samples.view(4, n, c.categories, c.classes).mean(1),
                     next_state["stoch"].view(n, c.categories, c.classes).mean(0)]:
            torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    else:
        mean, std = prior[0].chunk(2, -1)
        for s in [*samples, next_state["stoch"]]:
            torch.testing.assert_close(s.mean(0), mean, atol=4 * std.max().item() / n**0.5, rtol=0)
            torch.testing.assert_close(s.std(0), std, atol=0.03 * std.max().item(), rtol=0.03)


def test_calibration_centers_on_the_own_sample_without_spread_samples() -> None:
    """With "own", a calibration scales the decoder noise around the sample's own mean: `obs_mean` stays, the
    deviation of `obs` from it and `obs_std` scale. With "elites" the spread keeps its own center."""
    model = _model("box").eval()
    plain_own, plain_elites = _rollout(model, "box", "own", h=1), _rollout(model, "box", "elites", h=1)
    model.set_calibration(torch.full((1, 3), 0.5))
    cal_own, cal_elites = _rollout(model, "box", "own", h=1), _rollout(model, "box", "elites", h=1)
    torch.testing.assert_close(cal_own.obs_mean, plain_own.obs_mean)
    torch.testing.assert_close(cal_own.obs - cal_own.obs_mean, 0.5 * (plain_own.obs - plain_own.obs_mean))
    torch.testing.assert_close(cal_own.obs_std, 0.5 * plain_own.obs_std)
    torch.testing.assert_close(cal_elites.obs_std, 0.5 * plain_elites.obs_std)
    assert not torch.allclose(cal_elites.obs_mean, plain_elites.obs_mean)  # pulled toward the K samples' mean


@pytest.mark.slow
def test_bench_rssm_quick_run() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "benchmarks/bench_rssm.py", "--quick", "--no-record"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "RSSM none" in out.stdout and "gradient steps/s" in out.stdout
