"""The sampler of the diffusion world model: diffusers' EDM schedulers driving a denoising loop.

Kept apart from the network (worldmodel/denoiser.py) and the model (worldmodel/diffusion.py): the
model predicts, the sampler owns the step loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from data_pipeline.errors import InputError


class EDMSampler:
    """Samples x₀ ~ p(x₀ | condition) with a diffusers EDM scheduler; kept apart from the network.

    The network is passed in as `model_output(model_input, c_noise) -> F`: the scheduler applies EDM's
    c_in before the call (`scale_model_input`) and c_skip / c_out after it (`step`).
    """

    def __init__(self, num_steps: int, solver: str, sigma_min: float, sigma_max: float, sigma_data: float,
                 rho: float) -> None:
        if num_steps < 1:
            raise InputError(f"DiffusionConfig.num_steps: {num_steps}; expected >= 1")
        # diffusers is imported here, not at module level: it takes seconds, and only diffusion models use it.
        from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

        # prediction_type "epsilon" is diffusers' name for EDM's F parameterization (c_out > 0).
        common = dict(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, rho=rho,
                      sigma_schedule="karras", prediction_type="epsilon", final_sigmas_type="zero")
        if solver == "euler":
            self.scheduler: Any = EDMEulerScheduler(**common)
        elif solver == "dpm":
            self.scheduler = EDMDPMSolverMultistepScheduler(**common, solver_order=2, algorithm_type="dpmsolver++")
        else:
            raise InputError(f"DiffusionConfig.solver: {solver!r}; expected 'euler' or 'dpm'")
        self.num_steps = num_steps

    @torch.no_grad()  # as in diffusers pipelines: sampling is not differentiated through
    def sample(
        self,
        model_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        """A sample of `shape` (float32). Noise is drawn on CPU with `generator`, so a seed gives the
        same sample on any device; the EDM samplers used here are deterministic after that."""
        scheduler = self.scheduler
        scheduler.set_timesteps(self.num_steps, device=device)
        scheduler.set_begin_index(0)  # start at the top of the schedule, without a timestep lookup
        # EDM starts from N(0, σ_max²) (diffusers' init_noise_sigma is √(σ_max² + 1), a VE convention).
        x = torch.randn(shape, generator=generator, device="cpu").to(device) * float(scheduler.sigmas[0])
        for t in scheduler.timesteps:  # t = c_noise(σ) = ¼ ln σ, from σ_max down to σ_min
            model_input = scheduler.scale_model_input(x, t)  # c_in(σ) · x
            # One noise level for every row: c_noise (1,) broadcasts, so the networks embed it once.
            out = model_output(model_input, t.reshape(1))  # F(c_in · x, c_noise)
            x = scheduler.step(out.float(), t, x).prev_sample  # D = c_skip · x + c_out · F, then one ODE step
        return x
