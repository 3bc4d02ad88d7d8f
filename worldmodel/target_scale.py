"""The per-channel target scale the ensemble and the diffusion model share.

Both networks work on a per-step change divided by its per-channel std (`target_scale`, a buffer in the
model file), so their outputs are of order 1 on every channel and system. The scale is measured once, on
the first training batch (`set_target_scale`); a file written before the buffer existed loads with scale 1
(as it was trained), and a scale in a file that is not finite floats > 0 of the right shape is refused
(`load_target_scale`): the file is not trusted.
"""

from __future__ import annotations

from typing import Any

import torch

from data_pipeline.errors import InputError

CONSTANT_STD = 1e-3
"""A channel whose change has a std at or below this keeps scale 1: dividing by its ~0 std would only amplify
rounding (CartPole's constant reward)."""


def set_target_scale(scale: torch.Tensor, done: torch.Tensor, target: torch.Tensor) -> None:
    """Measure `scale` (D,) in place from `target` (..., D) unless `done` (a bool buffer) says it was; then set it."""
    rows = target.detach().float().flatten(0, -2)
    if not bool(done) and rows.shape[0] > 1:
        std = rows.std(0)
        scale.copy_(torch.where(std > CONSTANT_STD, std, torch.ones_like(std)))
        done.fill_(True)


def load_target_scale(state_dict: dict[str, Any], prefix: str, size: int, meaning: str) -> None:
    """Before `load_state_dict` reads `prefix + "target_scale"`: fill in scale 1 for an old file, refuse a bad one
    with an `InputError` naming the key, what it held and what was expected (`meaning`: what the scale is)."""
    key = prefix + "target_scale"
    if key not in state_dict:
        state_dict[key], state_dict[prefix + "target_scale_set"] = torch.ones(size), torch.tensor(True)
    scale = state_dict[key]
    if not (isinstance(scale, torch.Tensor) and scale.shape == (size,) and scale.is_floating_point()
            and bool(torch.isfinite(scale).all()) and bool((scale > 0).all())):
        found = (f"shape {tuple(scale.shape)}, {scale.dtype}" if isinstance(scale, torch.Tensor)
                 else type(scale).__name__)
        raise InputError(f"state_dict[{key!r}] ({found}): expected finite floats > 0 of shape ({size},), {meaning}")
