"""World models over trajectory windows: probabilistic ensemble, RSSM, diffusion and the physics hybrid.

    import worldmodel
    model = worldmodel.load("model.pt")          # or "runs:/<id>/model", "models:/name/1"
    state = model.observe(model.initial_state(1), obs, prev_action, is_first)
    state, pred = model.imagine(state, actions)

| module | job |
| --- | --- |
| `interface.py` | the `WorldModel` Protocol, `Prediction`, `State` and its batch helpers |
| `units.py` | `Units`: physical units <-> model units, action features, plausibility clamp |
| `base.py` | `ModelBase`: what the shipped models share (store, units, default `imagine`, model file writer) |
| `ensemble.py` | `EnsembleConfig`, `EnsembleWorldModel` (PETS / MBPO probabilistic ensemble) |
| `rssm.py`, `rssm_networks.py` | `RSSMConfig`, `RSSMWorldModel` (Dreamer) and its networks |
| `diffusion.py` | `DiffusionConfig`, `DiffusionWorldModel` (DIAMOND-style diffusion world model) |
| `denoiser.py`, `sampler.py` | its EDM networks, and the sampler that owns the denoising loop |
| `kinds.py` | `MODEL_KINDS`, the one table kind -> (model class, config class); configs from user data or a file |
| `io.py` | `load` a model file, a Lightning checkpoint or an MLflow URI (no code execution) |
| `lightning.py` | `WorldModelModule`, the thin Lightning wrapper `train.py fit` trains |
| `evaluation.py` | open-loop evaluation (NRMSE, coverage, CRPS) against persistence and linear baselines |
| `hybrid.py`, `hybrid_prior.py` | `HybridWorldModel`: a physics prior + a residual ensemble (APHYNITY) |
| `physics.py` | the physics prior contract: `PhysicsPrior`, `PhysicalParameter`, `load_prior` |
| `fmu_prior.py` | `FMUPrior`, `fmu_prior(fmu, config)`: an FMU as a step prior; `calibrate` (CLI) fits it |
| `calibration.py` | post-hoc calibration of the predictive spread on the val split (scales stored in the model) |
| `threads.py` | the torch thread count of a command (`--threads`): usable CPUs, OMP_NUM_THREADS, small models |
"""

from worldmodel.interface import Prediction, State, WorldModel, index_state, merge_state, repeat_state
from worldmodel.io import load

__all__ = ["Prediction", "State", "WorldModel", "index_state", "load", "merge_state", "repeat_state"]
