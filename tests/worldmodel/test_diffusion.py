"""Diffusion world model: EDM denoiser + sampler and the WorldModel contract on tiny seeded models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from gymnasium import spaces

import worldmodel
from data_pipeline.errors import InputError
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.denoiser import ImageDenoiser, edm_coefficients, edm_denoise
from worldmodel.diffusion import DiffusionConfig, DiffusionWorldModel
from worldmodel.interface import previous_actions

OBS_DIM, ACT_DIM, N_ACTIONS, IMG = 3, 2, 3, 32


def _schema(kind: str) -> StoreSchema:
    obs_space: spaces.Box
    if kind == "image":
        obs_space = spaces.Box(0, 255, (IMG, IMG, 3), np.uint8)
    else:
        obs_space = spaces.Box(-10.0, 10.0, (OBS_DIM,), np.float32)
    act_space = spaces.Discrete(N_ACTIONS) if kind == "discrete" else spaces.Box(-2.0, 2.0, (ACT_DIM,), np.float32)
    return StoreSchema.from_spaces(obs_space, act_space, dt=0.05)


def _normalization(kind: str) -> Normalization:
    obs = 0 if kind == "image" else OBS_DIM
    act = 0 if kind == "discrete" else ACT_DIM
    return Normalization(
        obs_mean=[0.5] * obs, obs_std=[2.0] * obs, obs_min=[-5.0] * obs, obs_max=[6.0] * obs,
        action_mean=[0.0] * act, action_std=[1.0] * act, action_min=[-2.0] * act, action_max=[2.0] * act,
        reward_mean=-1.0, reward_std=0.5, reward_min=-3.0, reward_max=0.0,
        num_actions=N_ACTIONS if kind == "discrete" else 0,
    )


def _model(kind: str, seed: int = 0, **fields: object) -> DiffusionWorldModel:
    torch.manual_seed(seed)
    config = DiffusionConfig.preset("tiny")
    for key, value in fields.items():
        setattr(config, key, value)
    return DiffusionWorldModel(config, _schema(kind), _normalization(kind))


def _actions(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if kind == "discrete":
        return torch.randint(N_ACTIONS, shape, generator=gen)
    return torch.rand(*shape, ACT_DIM, generator=gen) * 4 - 2


def _batch(kind: str, b: int = 4, t: int = 10, seed: int = 0) -> Batch:
    """Windows of a driven oscillator (images: a bar whose height is the state), one episode each."""
    gen = torch.Generator().manual_seed(seed)
    action = _actions(kind, (b, t), gen)
    drive = action.float() - 1.0 if kind == "discrete" else action[..., 0]
    phase = torch.rand(b, 1, generator=gen) * 6.28
    x = torch.sin(phase + 0.3 * torch.arange(t).float()) + 0.1 * drive.cumsum(1)
    obs = torch.stack([x, torch.cos(phase + 0.3 * torch.arange(t).float()), 0.5 * x**2], -1) * 2.0 + 0.5
    image = None
    if kind == "image":
        rows = ((x.clamp(-1.5, 1.5) + 1.5) / 3.0 * (IMG - 1)).long()
        bar = (torch.arange(IMG).view(1, 1, IMG) <= rows.unsqueeze(-1)).to(torch.uint8) * 200  # (B, T, H)
        image = bar.view(b, t, IMG, 1, 1).expand(b, t, IMG, IMG, 3).contiguous()
        obs = torch.zeros(b, t, 0)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    terminated = torch.zeros(b, t, dtype=torch.bool)
    terminated[0, -1] = True
    return Batch(obs=obs, action=action, reward=-(x**2) - 0.5, terminated=terminated, is_first=is_first,
                 is_last=terminated.clone(), image=image)


def _obs(kind: str, batch: Batch) -> torch.Tensor:
    obs = batch.image if kind == "image" else batch.obs
    assert obs is not None
    return obs


def _rollout(model: DiffusionWorldModel, kind: str, batch: Batch, seed: int, context: int = 4, horizon: int = 3):
    prev = previous_actions(batch.action, batch.is_first)
    with torch.no_grad():
        state = model.observe(model.initial_state(batch.batch_size), _obs(kind, batch)[:, :context],
                              prev[:, :context], batch.is_first[:, :context])
        return model.imagine(state, batch.action[:, context - 1 : context - 1 + horizon],
                             torch.Generator().manual_seed(seed))


def test_edm_preconditioning_matches_the_diffusers_scheduler() -> None:
    model = _model("box")
    scheduler = model.sampler.scheduler
    sigma = torch.tensor([0.01, 0.3, 2.0])
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, model.config.sigma_data)
    x, f = torch.randn(3, OBS_DIM), torch.randn(3, OBS_DIM)
    for i, s in enumerate(sigma):
        assert torch.allclose(scheduler.precondition_inputs(x[i], s), c_in[i] * x[i])
        assert torch.allclose(scheduler.precondition_noise(s), c_noise[i])
        assert torch.allclose(scheduler.precondition_outputs(x[i], f[i], s), c_skip[i] * x[i] + c_out[i] * f[i])


def test_sample_is_deterministic_for_a_seed() -> None:
    model = _model("box").eval()
    history = torch.randn(5, model.config.history, OBS_DIM, generator=torch.Generator().manual_seed(1))
    cond = torch.rand(5, model.cond_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = model.sample(history, cond, torch.Generator().manual_seed(7))
        b = model.sample(history, cond, torch.Generator().manual_seed(7))
        c = model.sample(history, cond, torch.Generator().manual_seed(8))
    assert a.shape == (5, OBS_DIM) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("solver,num_steps", [("euler", 3), ("euler", 5), ("dpm", 3)])
def test_sampler_calls_the_network_num_steps_times(solver: str, num_steps: int) -> None:
    model = _model("box", solver=solver, num_steps=num_steps).eval()
    calls = []
    handle = model.denoiser.register_forward_hook(lambda *args: calls.append(1))
    state = model.observe(model.initial_state(2), torch.randn(2, 1, OBS_DIM), torch.zeros(2, 1, ACT_DIM),
                          torch.ones(2, 1, dtype=torch.bool))
    with torch.no_grad():
        model.step(state, torch.zeros(2, ACT_DIM), torch.Generator().manual_seed(0))
    handle.remove()
    assert len(calls) == num_steps  # all spread samples in one batched call per denoising step


def test_sampler_denoises_to_the_networks_clean_estimate() -> None:
    """The scheduler's Euler step (c_in, c_skip, c_out applied by diffusers) lands on D(x; σ_min) at the end."""
    model = _model("box", num_steps=1).eval()
    history = torch.randn(3, model.config.history, OBS_DIM)
    cond = torch.rand(3, model.cond_dim)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sample = model.sample(history, cond, gen)
        x = torch.randn((3, OBS_DIM), generator=torch.Generator().manual_seed(3)) * model.config.sigma_max
        sigma = torch.full((3,), model.config.sigma_max)
        denoised, _ = edm_denoise(model.denoiser, x, sigma, history, cond, model.config.sigma_data)
    assert torch.allclose(sample, denoised, atol=1e-5)  # one step from σ_max to 0 is x + (D - x) = D


@pytest.mark.parametrize("kind", ["box", "discrete", "image"])
def test_shapes_and_dtypes_through_the_interface(kind: str) -> None:
    model = _model(kind).eval()
    batch = _batch(kind)
    b, k = batch.batch_size, model.config.history
    state = model.initial_state(b)
    assert state["count"].tolist() == [0] * b
    state, pred = _rollout(model, kind, batch, seed=0, horizon=3)
    obs_shape = (IMG, IMG, 3) if kind == "image" else (OBS_DIM,)
    buf_shape = (3, IMG, IMG) if kind == "image" else (OBS_DIM,)
    assert state["obs"].shape == (b, k, *buf_shape) and state["obs"].dtype == torch.float32
    assert state["action"].shape == (b, k, N_ACTIONS if kind == "discrete" else ACT_DIM)
    assert state["count"].tolist() == [k] * b
    for name in ("obs", "obs_mean", "obs_std"):
        value = getattr(pred, name)
        assert value.shape == (b, 3, *obs_shape) and value.dtype == torch.float32, name
        assert torch.isfinite(value).all()
    for name in ("reward", "terminated", "uncertainty"):
        assert getattr(pred, name).shape == (b, 3), name
    assert ((pred.terminated >= 0) & (pred.terminated <= 1)).all()
    if kind == "image":
        assert pred.obs.min() >= 0 and pred.obs.max() <= 255
        assert (pred.obs_std == 0).all() and (pred.uncertainty == 0).all()  # spread_samples 1 for images
    else:
        assert (pred.obs_std > 0).any() and (pred.uncertainty > 0).all()
        assert (pred.obs <= 6.0 + 0.25 * 11.0).all() and (pred.obs >= -5.0 - 0.25 * 11.0).all()


def test_observe_step_by_step_equals_all_at_once_and_resets_on_is_first() -> None:
    model = _model("box").eval()
    batch = _batch("box", t=7)
    is_first = batch.is_first.clone()
    is_first[1, 4] = True  # a new episode starts mid-sequence for row 1
    prev = previous_actions(batch.action, is_first)
    whole = model.observe(model.initial_state(4), batch.obs, prev, is_first)
    state = model.initial_state(4)
    for t in range(7):
        state = model.observe(state, batch.obs[:, t : t + 1], prev[:, t : t + 1], is_first[:, t : t + 1])
    for key in whole:
        assert torch.equal(whole[key], state[key]), key
    assert whole["count"].tolist() == [4, 3, 4, 4]
    # Row 1 was reset at t=4: padded with o_4, then o_5, o_6; the padding slot's action is zero.
    expected = model.units.normalize_obs(batch.obs[1, [4, 4, 5, 6]])
    assert torch.allclose(whole["obs"][1], expected)
    assert (whole["action"][1, :2] == 0).all()


def test_loss_is_finite_and_decreases_on_a_fixed_batch() -> None:
    model = _model("box")
    batch = _batch("box", b=8, t=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        torch.manual_seed(0)  # the same noise levels and noise every step: a fixed objective
        loss, metrics = model.loss(batch)
        assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in metrics.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_image_loss_is_finite_and_has_gradients() -> None:
    model = _model("image")
    loss, metrics = model.loss(_batch("image", b=2, t=4))
    loss.backward()
    assert torch.isfinite(loss)
    assert set(metrics) == {"denoise_loss", "denoised_mse", "reward_mse", "termination_bce"}
    assert isinstance(model.denoiser, ImageDenoiser)
    assert model.denoiser.unet.conv_in.weight.grad is not None


def test_training_examples_pad_like_observe() -> None:
    """The history of each training target equals the buffer `observe` builds from the same rows."""
    model = _model("discrete")
    batch = _batch("discrete", b=2, t=6)
    ex = model.training_examples(batch)
    prev = previous_actions(batch.action, batch.is_first)
    for j in (1, 3, 5):  # targets with 1, 3 and a full history of real rows
        state = model.observe(model.initial_state(2), batch.obs[:, :j], prev[:, :j], batch.is_first[:, :j])
        rows = torch.arange(2) * 5 + (j - 1)
        assert torch.allclose(ex["history"][rows], state["obs"])
        step_act = torch.cat([state["action"][:, 1:], model._action_features(batch.action[:, j - 1]).unsqueeze(1)], 1)
        assert torch.allclose(ex["cond"][rows], model._cond(step_act, state["count"]))


def test_save_load_round_trip_gives_identical_samples(tmp_path: Path) -> None:
    model = _model("discrete", spread_samples=3).eval()
    batch = _batch("discrete")
    path = model.save(str(tmp_path / "diffusion.pt"))
    loaded = worldmodel.load(path)
    assert isinstance(loaded, DiffusionWorldModel) and loaded.config == model.config
    _, a = _rollout(model, "discrete", batch, seed=5)
    _, b = _rollout(loaded, "discrete", batch, seed=5)
    for name in ("obs", "obs_mean", "obs_std", "reward", "terminated", "uncertainty"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_gpu_speedups_are_inert_on_cpu() -> None:
    """bf16 / compile / channels_last only act on CUDA: on CPU the samples are bit-identical."""
    batch = _batch("image", b=2)
    _, plain = _rollout(_model("image").eval(), "image", batch, seed=1, horizon=2)
    fast = _model("image", bf16=True, compile=True, channels_last=True).eval()
    _, flagged = _rollout(fast, "image", batch, seed=1, horizon=2)
    assert torch.equal(plain.obs, flagged.obs)
    assert getattr(fast.denoiser, "_compiled_call_impl", None) is None  # not compiled on CPU


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="solver"):
        _model("box", solver="heun")
    with pytest.raises(ValueError, match="norm_groups"):
        _model("image", norm_groups=3)
    with pytest.raises(ValueError, match="preset"):
        DiffusionConfig.preset("huge")


@pytest.mark.slow
def test_fit_through_train_py(tmp_path: Path, tiny_store) -> None:
    """Two training steps on a tiny store, end to end through `train.py fit`; the model file loads and rolls out."""
    pytest.importorskip("data_pipeline.windows.datamodule")
    store = tiny_store(episodes=6, obs_dim=OBS_DIM, action_dim=ACT_DIM, min_transitions=20, max_transitions=30)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    out = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "fit", "--config", str(REPO / "configs/pendulum/diffusion.yaml"),
         "--data.store", store.path, "--model.config", '{"preset": "tiny"}', "--trainer.max_steps", "2",
         "--trainer.max_epochs", "1", "--data.batch_size", "4", "--data.batches_per_epoch", "2",
         "--data.val_batches", "1", "--model.eval_windows", "4", "--model.eval_samples", "2",
         "--model.eval_horizons", "[1, 2]", "--trainer.accelerator", "cpu", "--out_dir", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert lines["model_uri"] and Path(lines["checkpoint"]).exists()
    model = worldmodel.load(lines["checkpoint"])
    assert isinstance(model, DiffusionWorldModel)
    state = model.observe(model.initial_state(2), torch.zeros(2, 1, OBS_DIM), torch.zeros(2, 1, ACT_DIM),
                          torch.ones(2, 1, dtype=torch.bool))
    _, pred = model.imagine(state, torch.zeros(2, 4, ACT_DIM), torch.Generator().manual_seed(0))
    assert pred.obs.shape == (2, 4, OBS_DIM) and torch.isfinite(pred.obs).all()


def test_residual_target_scale_is_measured_once_on_the_first_training_batch() -> None:
    """Vector residuals are denoised in units of their per-channel std from the first training batch; samples
    come back in z-scores. Whole observations and images are not scaled (no buffer)."""
    model = _model("box").train()
    assert not bool(model.target_scale_set) and torch.equal(model.target_scale, torch.ones(OBS_DIM))
    batch = _batch("box")
    x = model._to_model(batch.obs)
    expected = (x[:, 1:] - x[:, :-1]).reshape(-1, OBS_DIM).std(0)
    ex = model.training_examples(batch)
    torch.testing.assert_close(model.target_scale, expected)
    torch.testing.assert_close(ex["target"].std(0), torch.ones(OBS_DIM))  # unit variance on every channel
    model.training_examples(_batch("box", seed=1))  # later batches do not move it
    torch.testing.assert_close(model.target_scale, expected)
    model.eval()
    history, cond = torch.randn(4, model.config.history, OBS_DIM), torch.rand(4, model.cond_dim)
    with torch.no_grad():
        scaled = model.sample(history, cond, torch.Generator().manual_seed(3))
        model.target_scale.fill_(1.0)
        raw = model.sample(history, cond, torch.Generator().manual_seed(3))
    torch.testing.assert_close(scaled, raw * expected)  # samples are in z-scores, not in scaled units
    fresh = _model("box").eval()  # an evaluation pass measures nothing
    fresh.training_examples(batch)
    assert not bool(fresh.target_scale_set)
    for kind, fields in (("box", {"residual": False}), ("image", {})):
        other = _model(kind, **fields)
        assert not other.scaled and "target_scale" not in other.state_dict()


def test_a_model_file_without_target_scale_loads_unscaled_and_a_bad_scale_is_refused(tmp_path: Path) -> None:
    model = _model("box", spread_samples=2).train()
    model.loss(_batch("box"))
    model.eval()
    state = model.state_dict()
    assert bool(state["target_scale_set"]) and not torch.equal(state["target_scale"], torch.ones(OBS_DIM))
    old = {k: v for k, v in state.items() if not k.startswith("target_scale")}  # written before it existed
    fresh = _model("box", spread_samples=2).eval()
    fresh.load_state_dict(old)
    assert torch.equal(fresh.target_scale, torch.ones(OBS_DIM)) and bool(fresh.target_scale_set)
    # ... and behaves as the model did before the scale existed: its network's output is the z-score residual.
    unscaled = _model("box", spread_samples=2).eval()
    unscaled.load_state_dict(state)
    unscaled.target_scale.fill_(1.0)
    batch = _batch("box")
    _, a = _rollout(fresh, "box", batch, seed=2)
    _, b = _rollout(unscaled, "box", batch, seed=2)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.obs_std, b.obs_std)
    # Through worldmodel.load too (a file of the old format).
    checkpoint = model.checkpoint_dict()
    checkpoint["state_dict"] = old
    torch.save(checkpoint, tmp_path / "old.pt")
    loaded = worldmodel.load(str(tmp_path / "old.pt"))
    assert isinstance(loaded, DiffusionWorldModel) and torch.equal(loaded.target_scale, torch.ones(OBS_DIM))
    bad_scales = (torch.full((OBS_DIM,), float("nan")), torch.zeros(OBS_DIM), -torch.ones(OBS_DIM),
                  torch.ones(2), torch.ones(OBS_DIM, dtype=torch.long), [1.0] * OBS_DIM)
    for bad in bad_scales:
        with pytest.raises(InputError, match=rf"target_scale.*expected finite floats > 0 of shape \({OBS_DIM},\)"):
            _model("box").load_state_dict({**state, "target_scale": bad})
    checkpoint["state_dict"] = {**state, "target_scale": torch.zeros(OBS_DIM)}
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="target_scale"):
        worldmodel.load(str(tmp_path / "bad.pt"))
