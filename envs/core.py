"""The one stepping code path behind `WorldModelEnv` and `WorldModelVectorEnv`.

`BatchedCore` holds a batch of imagined systems: the model's state for each, the last observation
returned, and where each episode started. Resets assimilate real history with `WorldModel.observe`;
steps are one batched `WorldModel.step` on the model's device, followed by the reward, termination and
uncertainty bookkeeping in numpy. The envs add only Gymnasium's API on top (autoreset, time limits,
unbatching for the single env); seeding and rendering, which both envs do alike, live here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from gymnasium import spaces

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import check_schema_compatible
from envs.loading import TransitionFn, load_model, open_store, transition_fn
from envs.render import Trace, image_frame, plot_channels
from envs.starts import DEFAULT_CACHE_BYTES, History, RecordedStarts
from worldmodel.ensemble import UNCERTAINTIES, Uncertainty, uncertainty_mode
from worldmodel.interface import State, WorldModel, index_state, merge_state

Termination = Literal["threshold", "sample", "never"]
Precision = Literal["32-true", "bf16-mixed"]
RESET_OPTION_KEYS = ("episode", "t", "history", "reset_mask")
SEED_HIGH = 2**63 - 1
RENDER_MODES = ["rgb_array"]


@dataclass
class CoreConfig:
    """How a learned env turns model predictions into Gymnasium steps (see the env docstrings)."""

    history: int = 16
    """Recorded rows assimilated before a start from the store (the start row included). An RSSM needs
    context to infer its latent state; the ensemble uses only the last row."""
    reward_fn: str | TransitionFn | None = None
    """`module:function` (or a callable) f(obs, action, next_obs) -> reward on batched numpy arrays; None
    uses the model's reward head."""
    termination_fn: str | TransitionFn | None = None
    """`module:function` (or a callable) f(obs, action, next_obs) -> bool terminated; None uses `termination`."""
    termination: Termination = "threshold"
    """Model termination head: "threshold" (probability > 0.5, deterministic), "sample" (Bernoulli with the
    env's generator) or "never"."""
    uncertainty_penalty: float = 0.0
    """MOPO-style penalty: reward -= uncertainty_penalty * uncertainty."""
    uncertainty: Uncertainty | None = None
    """What the model computes beside the samples (`worldmodel.ensemble.Uncertainty`; the samples are the same):
    "elites" the ensemble's disagreement (info `uncertainty`, needed by `uncertainty_penalty`), "own" only each
    sub-env's own member (info `uncertainty` 0, `obs_std` aleatoric: 3-5x faster at 1024 envs), "none" no
    spread at all (no `obs_std` in the info). None: "elites" with an `uncertainty_penalty`, else "own", the
    fast path, since an env's consumer (an RL agent) reads only observations and rewards. The RSSM follows the
    same choice ("elites": the spread of its `uncertainty_samples` prior samples; "own"/"none": only the
    trajectory's sample is decoded, `uncertainty` 0). Diffusion and hybrid models compute their own uncertainty
    whatever the choice; "none" still drops `obs_std`."""
    device: str | None = None
    """Device to run the model on; None keeps a loaded model where it is (a file is loaded on CPU)."""
    precision: Precision = "32-true"
    """"bf16-mixed" runs the model under torch.autocast(bfloat16): 2-4x faster on CPUs with AVX512-BF16 /
    AMX and on GPUs, at bf16 accuracy in the networks (predictions still leave in float32)."""
    cache_bytes: int = DEFAULT_CACHE_BYTES
    """Vector stores whose obs and action rows fit are read into memory once; others are read per reset."""
    render_mode: str | None = None
    """"rgb_array" keeps each sub-env's episode so far for `render()`; None renders nothing."""


class EnvOptions(TypedDict, total=False):
    """`CoreConfig`'s fields as keyword arguments of both envs (`gymnasium.make(..., history=32)`), typed."""

    history: int
    reward_fn: str | TransitionFn | None
    termination_fn: str | TransitionFn | None
    termination: Termination
    uncertainty_penalty: float
    uncertainty: Uncertainty | None
    device: str | None
    precision: Precision
    cache_bytes: int


@dataclass
class CoreStep:
    """One batched step, numpy arrays with the batch first."""

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    uncertainty: np.ndarray
    obs_std: np.ndarray | None = field(default=None)
    """(B, obs_dim) predictive std per channel (vector observations only)."""


class BatchedCore:
    """A batch of `num_envs` imagined copies of the recorded system, stepped together."""

    def __init__(self, model: WorldModel | str | os.PathLike, store: TrajectoryStore | str | os.PathLike,
                 num_envs: int, config: CoreConfig) -> None:
        if num_envs < 1:
            raise InputError(f"num_envs={num_envs}; expected at least 1")
        if config.termination not in ("threshold", "sample", "never"):
            raise InputError(f"termination={config.termination!r}; expected 'threshold', 'sample' or 'never'")
        if config.precision not in ("32-true", "bf16-mixed"):
            raise InputError(f"precision={config.precision!r}; expected '32-true' or 'bf16-mixed'")
        if config.uncertainty is not None and config.uncertainty not in UNCERTAINTIES:
            raise InputError(f"uncertainty={config.uncertainty!r}; expected one of {list(UNCERTAINTIES)}")
        if config.uncertainty_penalty and config.uncertainty not in (None, "elites"):
            raise InputError(f"uncertainty_penalty={config.uncertainty_penalty} needs the ensemble's disagreement: "
                             f"uncertainty='elites' (or leave it unset), not {config.uncertainty!r}")
        self.uncertainty: Uncertainty = config.uncertainty or ("elites" if config.uncertainty_penalty else "own")
        if config.render_mode is not None and config.render_mode not in RENDER_MODES:
            raise InputError(f"render_mode={config.render_mode!r}; expected None or one of {RENDER_MODES}")
        self.config = config
        self.num_envs = num_envs
        self.store = open_store(store)
        self.model = load_model(model, config.device)
        self.device = self.model.device
        self.schema = self.store.schema
        check_schema_compatible(self.schema, self.model.schema, use="model", where=f"store {self.store.path}")
        observation_space = self.schema.gym_observation_space()
        assert isinstance(observation_space, spaces.Box)  # vectors and images are both Boxes
        self.observation_space: spaces.Box = observation_space
        self.action_space = self.schema.gym_action_space()
        self.action_shape: tuple[int, ...] = tuple(self.action_space.shape or ())  # () for Discrete
        self.image_obs = self.schema.image_obs
        self.discrete = isinstance(self.action_space, spaces.Discrete)
        self.starts = RecordedStarts(self.store, config.history, config.cache_bytes)
        self.reward_fn = transition_fn(config.reward_fn)
        self.termination_fn = transition_fn(config.termination_fn)
        self._bf16 = config.precision == "bf16-mixed"
        self.generator = torch.Generator(device="cpu")  # models draw their noise on CPU from it
        self._seeded = False
        self.state: State | None = None
        self.obs = np.zeros((num_envs, *self.observation_space.shape), self.observation_space.dtype)
        self.start_episode = np.full(num_envs, -1, np.int64)
        self.start_t = np.zeros(num_envs, np.int64)
        self._obs_low, self._obs_high = self.observation_space.low, self.observation_space.high
        if isinstance(self.action_space, spaces.Box):
            self._act_low = self.action_space.low.astype(np.float32)
            self._act_high = self.action_space.high.astype(np.float32)
        recording = config.render_mode is not None and not self.image_obs
        self.trace = Trace(num_envs, self.schema.obs_dim) if recording else None

    @property
    def render_fps(self) -> int:
        """Frames per second of real time: one frame per recorded step."""
        return max(1, round(1.0 / self.schema.dt))

    def seed(self, np_random: np.random.Generator, seed: int | None) -> None:
        """Seed the model's sampling noise from the env's `np_random`, on a seeded reset or the first one.

        Drawing the torch seed from `np_random` makes one `reset(seed=s)` fix both the start states and
        the model's noise; unseeded resets after the first keep the noise stream going.
        """
        if seed is not None or not self._seeded:
            self.generator.manual_seed(int(np_random.integers(SEED_HIGH)))
            self._seeded = True

    # ------------------------------------------------------------------ reset
    def reset(self, index: np.ndarray, rng: np.random.Generator, options: dict[str, Any] | None
              ) -> dict[str, np.ndarray]:
        """Start the sub-envs at `index` (see the env docstrings for `options`); updates `self.obs[index]`.

        Returns the reset info for those sub-envs: `start_episode` (store position, -1 for a given
        history) and `start_t` (row of the start within it).
        """
        options = dict(options or {})
        unknown = set(options) - set(RESET_OPTION_KEYS)
        if unknown:
            raise InputError(f"reset options: unknown keys {sorted(unknown)}; expected some of {RESET_OPTION_KEYS}")
        if self.state is None and len(index) != self.num_envs:
            raise RuntimeError("reset: the first reset must start every sub-env (no reset_mask)")
        k = len(index)
        if "history" in options:
            if "episode" in options or "t" in options:
                raise InputError("reset options: give either 'history' or 'episode'/'t', not both")
            given = options["history"]
            if not isinstance(given, dict) or "obs" not in given or "action" not in given:
                raise InputError("reset options['history']: expected a dict with 'obs' and 'action' arrays")
            hist = History.from_arrays(given["obs"], given["action"], image=self.image_obs,
                                       action_shape=self.action_shape, batch=k,
                                       is_first=given.get("is_first"))
        else:
            if "episode" in options:
                episode, t = self.starts.resolve(options["episode"], options.get("t", 0), k)
            elif "t" in options:
                raise InputError("reset options: 't' needs an 'episode'")
            else:
                episode, t = self.starts.sample(rng, k)
            hist = self.starts.history_for(episode, t)
        self._assimilate(index, hist)
        self.obs[index] = self._as_obs(hist.last_obs)
        self.start_episode[index] = hist.episode
        self.start_t[index] = hist.t
        if self.trace is not None:
            self.trace.start(index, self._as_obs(hist.obs), hist.is_first)
        return {"start_episode": hist.episode.copy(), "start_t": hist.t.copy()}

    def _assimilate(self, index: np.ndarray, hist: History) -> None:
        obs = torch.from_numpy(np.ascontiguousarray(hist.obs)).to(self.device)
        prev = torch.from_numpy(np.ascontiguousarray(hist.prev_action)).to(self.device)
        first = torch.from_numpy(hist.is_first).to(self.device)
        rows = torch.from_numpy(np.asarray(index, np.int64)).to(self.device)
        with torch.inference_mode(), self._autocast():
            # Initial states come from the full batch so models that spread something over the batch
            # (the ensemble's members) keep sub-env i on the same share whichever sub-envs reset.
            fresh = index_state(self.model.initial_state(self.num_envs), rows)
            if self.model.supports_member_resampling:  # trajectory sampling: each episode follows a random elite
                fresh = self.model.resample_members(fresh, self.generator)
            fresh = self.model.observe(fresh, obs, prev, first)
            if self.state is None or len(index) == self.num_envs and np.array_equal(index, np.arange(self.num_envs)):
                self.state = fresh
            else:
                self.state = merge_state(self.state, rows, fresh)

    # ------------------------------------------------------------------ step
    def step(self, action: Any) -> CoreStep:
        """Advance every sub-env one step under `action` ((B, action_dim) Box or (B,) Discrete)."""
        if self.state is None:
            raise RuntimeError("step before reset: call reset() first")
        act = self._as_action(action)
        with torch.inference_mode(), self._autocast(), uncertainty_mode(self.model, self.uncertainty):
            self.state, pred = self.model.step(self.state, torch.from_numpy(act).to(self.device), self.generator)
        next_obs = self._as_obs(pred.obs.float().cpu().numpy())
        uncertainty = pred.uncertainty.float().cpu().numpy()
        if self.reward_fn is not None:
            reward = self._call(self.reward_fn, "reward_fn", self.obs, act, next_obs, np.float32)
        else:
            reward = pred.reward.float().cpu().numpy()
        if self.termination_fn is not None:
            terminated = self._call(self.termination_fn, "termination_fn", self.obs, act, next_obs, np.bool_)
        elif self.config.termination == "threshold":
            terminated = (pred.terminated.float() > 0.5).cpu().numpy()
        elif self.config.termination == "sample":
            draw = torch.rand(pred.terminated.shape, generator=self.generator, device="cpu")
            terminated = (draw < pred.terminated.float().cpu()).numpy()
        else:
            terminated = np.zeros(self.num_envs, bool)
        if self.config.uncertainty_penalty:
            reward = reward - np.float32(self.config.uncertainty_penalty) * uncertainty
        obs_std = None if self.image_obs or self.uncertainty == "none" else pred.obs_std.float().cpu().numpy()
        self.obs = next_obs.copy()  # the caller owns the returned array
        if self.trace is not None:
            self.trace.append(next_obs, obs_std, uncertainty)
        return CoreStep(obs=next_obs, reward=reward.astype(np.float32, copy=False), terminated=terminated,
                        uncertainty=uncertainty, obs_std=obs_std)

    def render_frame(self, i: int) -> np.ndarray:
        """An RGB array of sub-env `i`: its channels over the episode so far, or its current (predicted) image."""
        if self.image_obs:
            return image_frame(self.obs[i])
        if self.trace is None or self.state is None:
            raise RuntimeError("render() before reset(): there is no episode to plot yet")
        return plot_channels(self.trace, i, self.schema.obs_channels, self.schema.obs_units, self.schema.dt)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16)

    def _as_action(self, action: Any) -> np.ndarray:
        n = self.num_envs
        if isinstance(self.action_space, spaces.Discrete):
            act = np.asarray(action)
            if act.shape == (n, 1):  # store layout: one action channel
                act = act[:, 0]
            if act.shape != (n,) or not np.issubdtype(act.dtype, np.integer):
                raise InputError(f"action: got shape {act.shape} dtype {act.dtype}; expected ({n},) integers "
                                 f"in {self.action_space}")
            lo, hi = self.action_space.start, self.action_space.start + self.action_space.n
            if act.min() < lo or act.max() >= hi:
                raise InputError(f"action: values {act.min()}..{act.max()} outside {self.action_space}")
            return act.astype(np.int64, copy=False)
        act = np.asarray(action, np.float32)
        if act.shape != (n, *self.action_shape):
            raise InputError(f"action: got shape {act.shape}; expected {(n, *self.action_shape)} "
                             f"(sub-envs × {self.schema.action_channels})")
        # As Gymnasium's own envs do, out-of-range actions are clipped to the actuators' limits.
        return np.clip(act, self._act_low, self._act_high)

    def _as_obs(self, obs: np.ndarray) -> np.ndarray:
        """Model output (or recorded rows) in the observation space's dtype, clipped to its bounds."""
        if self.image_obs:
            return np.clip(np.rint(obs), 0, 255).astype(np.uint8) if obs.dtype != np.uint8 else obs.copy()
        return np.clip(obs.astype(np.float32, copy=False), self._obs_low, self._obs_high)

    def _call(self, fn: TransitionFn, name: str, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray,
              dtype: type) -> np.ndarray:
        out = np.asarray(fn(obs, act, next_obs))
        if out.shape != (self.num_envs,):
            raise InputError(f"{name} {getattr(fn, '__name__', fn)!r} returned shape {out.shape}; expected "
                             f"({self.num_envs},), one value per sub-env")
        return out.astype(dtype, copy=False)
