"""Sizes and loss weights of the RSSM world model (worldmodel/rssm.py), the `model.config` of `kind: rssm`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from data_pipeline.errors import InputError


@dataclass
class RSSMConfig:
    """Sizes and loss weights of the RSSM. The defaults are the "small" preset."""

    latent: Literal["gaussian", "categorical"] = "categorical"
    """Stochastic latent: a diagonal Gaussian, or DreamerV3's one-hot categoricals."""
    deter: int = 256
    """Size of the deterministic (GRU) state."""
    stoch: int = 32
    """Size of the Gaussian latent (used when latent is "gaussian")."""
    categories: int = 16
    """Number of categorical latent variables (used when latent is "categorical")."""
    classes: int = 16
    """Classes of each categorical latent variable (used when latent is "categorical")."""
    hidden: int = 256
    """Width of the MLP layers (encoder, decoder, heads, latent networks)."""
    layers: int = 2
    """Hidden layers of the encoder, decoder and head MLPs."""
    cnn_depth: int = 32
    """Channels of the first conv layer for image observations (doubled at each of the 4 stages)."""
    unimix: float = 0.01
    """Uniform mixture of the categorical probabilities (DreamerV3), keeping every class possible."""
    min_latent_std: float = 0.1
    """Lower bound of the Gaussian latent's standard deviation."""
    min_obs_std: float = 0.05
    """Lower bound of the decoder's standard deviation, in normalized units."""
    max_obs_std: float = 1.0
    """Upper bound of the decoder's standard deviation, in normalized units."""
    free_nats: float = 1.0
    """Free bits: KL terms below this many nats per step are not penalized."""
    kl_dyn: float = 0.5
    """Weight of the dynamics KL, KL(sg(posterior) || prior): trains the prior."""
    kl_rep: float = 0.1
    """Weight of the representation KL, KL(posterior || sg(prior)): regularizes the posterior."""
    obs_scale: float = 1.0
    """Weight of the observation reconstruction loss (Gaussian NLL)."""
    reward_scale: float = 1.0
    """Weight of the reward loss (squared error in symlog space)."""
    termination_scale: float = 1.0
    """Weight of the termination loss (binary cross-entropy)."""
    uncertainty_samples: int = 4
    """Prior latent samples per imagined step with `uncertainty` "elites"; the spread of their decoded means is
    the uncertainty."""
    plausible_margin: float = 0.25
    """Imagined observations stay within the recorded range widened by this fraction of it."""

    @classmethod
    def preset(cls, name: str) -> RSSMConfig:
        """A size preset: "tiny" (tests), "small" (the defaults) or "medium"."""
        presets: dict[str, dict[str, Any]] = {
            "tiny": dict(deter=32, stoch=8, categories=4, classes=4, hidden=32, layers=1, cnn_depth=4,
                         uncertainty_samples=2),
            "small": {},
            "medium": dict(deter=512, stoch=64, categories=32, classes=32, hidden=512, layers=3,
                           cnn_depth=48),
        }
        if name not in presets:
            raise InputError(f"RSSMConfig.preset: unknown preset {name!r}; expected one of {sorted(presets)}")
        return replace(cls(), **presets[name])
