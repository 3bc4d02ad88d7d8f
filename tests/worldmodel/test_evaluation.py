"""Evaluation metrics checked against their definitions."""

from __future__ import annotations

import torch

from worldmodel.evaluation import crps_samples


def _crps_brute_force(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """CRPS = E|X - y| - ½ E|X - X'| over the empirical distribution, by a double loop over samples."""
    s = samples.shape[1]
    term1 = sum((samples[:, i] - truth).abs() for i in range(s)) / s
    term2 = sum((samples[:, i] - samples[:, j]).abs() for i in range(s) for j in range(s)) / (s * s)
    return term1 - 0.5 * term2


def test_crps_equals_the_brute_force_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(5, 17, 3, generator=gen, dtype=torch.float64)  # (B, S, D)
    truth = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(crps_samples(samples, truth), _crps_brute_force(samples, truth))


def test_crps_of_a_point_forecast_is_the_absolute_error_and_never_negative() -> None:
    truth = torch.tensor([[1.0, -2.0]])
    point = torch.tensor([[[3.0, -2.5]]]).expand(1, 8, 2)
    torch.testing.assert_close(crps_samples(point, truth), torch.tensor([[2.0, 0.5]]))
    spread = torch.randn(4, 32, 2, generator=torch.Generator().manual_seed(1))
    assert bool((crps_samples(spread, torch.zeros(4, 2)) >= 0).all())
