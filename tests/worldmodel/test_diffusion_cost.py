"""Diffusion world model: what an imagined step costs (issue 18): the noise level is embedded once per
denoising call, and the shipped Pendulum config stays within its network-call budget."""

from __future__ import annotations

import math

import torch
import yaml
from conftest import REPO
from test_diffusion import OBS_DIM, _model

from worldmodel.denoiser import VectorDenoiser
from worldmodel.diffusion import DiffusionConfig


def test_sampling_embeds_the_noise_level_once_per_call_with_the_same_samples() -> None:
    """One σ per denoising call: the sampler hands the network a (1,) noise level, embedded once and
    broadcast over the rows, and that gives the samples a per-row embedding gives."""
    model = _model("box").eval()
    assert isinstance(model.denoiser, VectorDenoiser)
    rows = []
    handle = model.denoiser.noise_embed.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    history = torch.randn(6, model.config.history, OBS_DIM)
    cond = torch.rand(6, model.cond_dim)
    with torch.no_grad():
        once = model.sample(history, cond, torch.Generator().manual_seed(1))
    handle.remove()
    assert rows == [1] * model.config.num_steps
    forward = model.denoiser.forward
    setattr(model.denoiser, "forward", lambda x, c, h, k: forward(x, c.expand(x.shape[0]), h, k))  # noqa: B010
    with torch.no_grad():
        per_row = model.sample(history, cond, torch.Generator().manual_seed(1))
    assert torch.allclose(once, per_row, atol=1e-5)


def test_shipped_pendulum_config_fits_the_cost_budget_and_can_be_calibrated() -> None:
    """Network calls per imagined step (denoising steps × spread samples) at most 4, the RSSM-relative
    budget measured in BENCHMARKS.md (bench_diffusion), with at least 2 samples so that `calibrate` has a
    center to scale around; σ_data of the order of the denoised target's std, which is 1 per channel (the
    residual is divided by `target_scale`), and the training noise centred below σ_data as in EDM."""
    spec = yaml.safe_load((REPO / "configs/pendulum/diffusion.yaml").read_text())["model"]["config"]
    config = DiffusionConfig.preset(spec.pop("preset"))
    for key, value in spec.items():
        setattr(config, key, value)
    assert config.spread_samples is not None and config.spread_samples >= 2
    assert config.num_steps * config.spread_samples <= 4
    assert config.residual and 0.5 <= config.sigma_data <= 1.0
    assert math.exp(config.train_sigma_mean) < config.sigma_data
