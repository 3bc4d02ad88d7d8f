"""Belief sync: a world model's belief about running systems, updated one real step at a time.

    twin = Twin(model)                                  # batch=B mirrors B systems side by side
    twin.observe(obs, action_before)                    # each new step (the action taken before obs)
    pred = twin.predict(action)                         # the next observation under the action taken now
    env.reset(options={"history": twin.history()})      # hand the twin's state to WorldModel-v0
    twin.save_history("now.npz")                        # ... or to generate.py ({history: now.npz})
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from data_pipeline.schema import DISCRETE_FILL
from data_pipeline.store.files import atomic_write
from envs.loading import load_model
from twin.anomaly import mixture, pool
from worldmodel.interface import Prediction, WorldModel, repeat_state


class Twin:
    """A world model's belief about B running systems, updated one real step at a time.

    `observe(obs, action_before)` assimilates the newest observation (the action is the one taken
    *before* it, as in `WorldModel.observe`); `predict(action)` is the one-step prediction of the next
    observation under the action taken now, pooled over `particles` belief copies. Feeding an
    episode step by step gives the same predictions as `WorldModel.observe` over the whole history.
    The last `history` rows are kept for `history()` / `save_history()`.
    """

    def __init__(self, model: WorldModel | str, batch: int = 1, history: int = 256, particles: int = 1,
                 device: str | None = None, seed: int = 0) -> None:
        if batch < 1 or history < 2 or particles < 1:
            raise ValueError(f"Twin: batch={batch}, history={history}, particles={particles}; expected "
                             "batch ≥ 1, history ≥ 2, particles ≥ 1")
        self.model = load_model(model, device)
        self.batch, self.particles, self.capacity = batch, particles, history
        self.obs_dim = self.model.obs_dim
        self.discrete = self.model.discrete
        self.action_shape: tuple[int, ...] = () if self.discrete else (self.model.schema.action_dim,)
        self.generator = torch.Generator().manual_seed(seed)
        self.state = self.model.initial_state(batch * particles)
        self._fresh = np.ones(batch, bool)  # the next observe starts a new belief
        self.steps = 0
        # History rows live in buffers of twice the capacity: rows are appended at `_end` and, when the
        # buffer is full, the newest `history - 1` rows move to the front (amortized O(1) per step).
        self._obs = np.zeros((batch, 2 * history, self.obs_dim), np.float32)
        self._fill = DISCRETE_FILL if self.discrete else np.nan
        self._act = np.full((batch, 2 * history, *self.action_shape), self._fill,
                            np.int64 if self.discrete else np.float32)
        self._first = np.zeros((batch, 2 * history), bool)
        self._len = np.zeros(batch, np.int64)  # rows seen per system, at most `history`
        self._end = 0  # next row of the buffers (all systems observe together)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset(self, index: np.ndarray | list[int] | None = None) -> None:
        """Forget the belief of these systems (all by default): their next `observe` starts afresh."""
        self._fresh[slice(None) if index is None else np.asarray(index)] = True

    def _rows(self, x: Any, dtype: type, shape: tuple[int, ...], name: str) -> np.ndarray:
        x = np.asarray(x, dtype)
        if x.shape == shape:
            x = x[None]
        if x.shape != (self.batch, *shape):
            raise ValueError(f"Twin: {name} has shape {x.shape}; expected {(self.batch, *shape)} "
                             f"(systems × channels) or {shape} for a single system")
        return x

    @torch.inference_mode()
    def observe(self, obs: Any, action_before: Any = None, is_first: Any = None) -> None:
        """Assimilate the newest observation `(B, obs_dim)` of each system.

        `action_before` `(B, action_dim)` (or `(B,)` Discrete) is the action taken at the previous
        observation; None only where the belief starts afresh (the first step, after `reset`, or where
        `is_first` `(B,)` is set).
        """
        obs = self._rows(obs, np.float32, (self.obs_dim,), "obs")
        first = self._fresh.copy()
        if is_first is not None:
            first |= np.asarray(is_first, bool).reshape(self.batch)
        act_dtype = np.int64 if self.discrete else np.float32
        if action_before is None:
            if not first.all():
                raise ValueError("Twin.observe: action_before is None for a system that is not starting afresh; "
                                 "pass the action taken at its previous observation")
            prev = np.zeros((self.batch, *self.action_shape), act_dtype)
        else:
            prev = self._rows(action_before, act_dtype, self.action_shape, "action_before")
        p = self.particles
        if first.any():  # the action before a first row is unknown; `observe` ignores it there
            prev = np.where(first.reshape(-1, *[1] * len(self.action_shape)), 0, prev).astype(act_dtype)
        if p > 1:
            obs, prev, first_p = np.repeat(obs, p, 0), np.repeat(prev, p, 0), np.repeat(first, p)
        else:
            first_p = first
        state_obs = torch.from_numpy(obs[:, None]).to(self.device)
        state_prev = torch.from_numpy(prev[:, None]).to(self.device)
        state_first = torch.from_numpy(first_p[:, None]).to(self.device)
        if first.all():
            self.state = self.model.initial_state(self.batch * p)
        self.state = self.model.observe(self.state, state_obs, state_prev, state_first)
        self._record(obs[::p], prev[::p], first)
        self._fresh[:] = False
        self.steps += 1

    def _record(self, obs: np.ndarray, prev: np.ndarray, first: np.ndarray) -> None:
        """Append a history row; the previous row's action becomes `prev` (store-aligned history)."""
        if self._end == 2 * self.capacity:  # full: keep the newest history - 1 rows, at the front
            keep = slice(self._end - self.capacity + 1, self._end)
            n = self.capacity - 1
            self._obs[:, :n], self._act[:, :n], self._first[:, :n] = \
                self._obs[:, keep], self._act[:, keep], self._first[:, keep]
            self._end = n
        e = self._end
        if e > 0:  # the action taken at the previous row (left as is where the belief restarts)
            has_prev = ~first
            if has_prev.all():
                self._act[:, e - 1] = prev
            else:
                self._act[has_prev, e - 1] = prev[has_prev]
        self._obs[:, e] = obs
        self._act[:, e] = self._fill
        self._first[:, e] = first
        self._end = e + 1
        self._len = np.minimum(self._len + 1, self.capacity)

    @torch.inference_mode()
    def predict(self, action: Any, generator: torch.Generator | None = None) -> Prediction:
        """The one-step prediction `(B, …)` of the next observation under `action` taken now.

        Does not move the belief (the next real observation does that). With particles > 1 the
        prediction is their mixture: mean of means, std from the mean variance and the means' spread.
        """
        if self._fresh.any():
            raise RuntimeError("Twin.predict before observe: the twin has no belief yet for some systems")
        act = self._rows(action, np.int64 if self.discrete else np.float32, self.action_shape, "action")
        self._act[:, self._end - 1] = act  # the action taken at the newest row
        act_t = torch.from_numpy(act if self.particles == 1 else np.repeat(act, self.particles, 0)).to(self.device)
        _, pred = self.model.step(self.state, act_t, generator or self.generator)
        if self.particles == 1:
            return pred
        b, p = self.batch, self.particles
        mean, std = pool(pred, b, p)

        def avg(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, p, *x.shape[1:]).float().mean(1)

        return Prediction(obs=pred.obs.reshape(b, p, *pred.obs.shape[1:])[:, 0],
                          obs_mean=torch.from_numpy(mean).float(), obs_std=torch.from_numpy(std).float(),
                          reward=avg(pred.reward), terminated=avg(pred.terminated),
                          uncertainty=avg(pred.uncertainty))

    @torch.inference_mode()
    def track(self, obs: Any, action: Any, action_before: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Observe T new rows of one system and predict each next one: the live loop for a block of rows.

        `obs` (T, obs_dim) and `action` (T, …) store-aligned (action[t] taken at obs[t]);
        `action_before` is the action taken before obs[0] (None where the belief starts afresh).
        Returns the pooled prediction for the row after each one: mean and std, (T, obs_dim) each.
        Same as `observe` + `predict` row by row; for models that declare `markov` (the belief is just
        the last observation: the ensemble) the T predictions are one batched call.
        """
        if self.batch != 1:
            raise ValueError(f"Twin.track mirrors one system; this twin has batch={self.batch}")
        act_dtype = np.int64 if self.discrete else np.float32
        obs = np.asarray(obs, np.float32).reshape(-1, self.obs_dim)
        action = np.asarray(action, act_dtype).reshape(len(obs), *self.action_shape)
        t_len = len(obs)
        if t_len == 0:
            return np.zeros((0, self.obs_dim)), np.zeros((0, self.obs_dim))
        if not self.model.markov or t_len == 1:
            means, stds = [], []
            prev = action_before
            for t in range(t_len):
                self.observe(obs[t], prev)
                pred = self.predict(action[t])
                means.append(pred.obs_mean.float().numpy()[0])
                stds.append(pred.obs_std.float().numpy()[0])
                prev = action[t]
            return np.stack(means).astype(np.float64), np.stack(stds).astype(np.float64)
        # Markov belief: row t's belief comes from row t alone, so all T rows are one batch of T * P.
        p = self.particles
        for t in range(t_len - 1):  # history bookkeeping of all but the last row (observe does the last)
            prev = action_before if t == 0 else action[t - 1]
            first = self._fresh.copy() if t == 0 else np.zeros(1, bool)
            if prev is None and not first.all():
                raise ValueError("Twin.track: action_before is None for a system that is not starting afresh")
            self._record(obs[t : t + 1], np.zeros((1, *self.action_shape), act_dtype) if prev is None
                         else np.asarray(prev, act_dtype).reshape(1, *self.action_shape), first)
            self._act[:, self._end - 1] = action[t]
            self._fresh[:] = False
            self.steps += 1
        self.observe(obs[-1], action_before if t_len == 1 else action[-2])
        self._act[:, self._end - 1] = action[-1]
        rows = repeat_state(self.state, t_len)  # (P * T) rows: particle-major, then time
        rows = self.model.observe(
            rows, torch.from_numpy(np.tile(obs, (p, 1))[:, None]).to(self.device),
            torch.zeros((p * t_len, 1, *self.action_shape), dtype=torch.int64 if self.discrete else torch.float32,
                        device=self.device),
            torch.ones(p * t_len, 1, dtype=torch.bool, device=self.device))
        _, pred = self.model.step(rows, torch.from_numpy(np.tile(action, (p, *[1] * (action.ndim - 1))))
                                  .to(self.device), self.generator)
        mean = pred.obs_mean.float().cpu().numpy().astype(np.float64).reshape(p, t_len, -1)
        std = pred.obs_std.float().cpu().numpy().astype(np.float64).reshape(p, t_len, -1)
        if p == 1:
            return mean[0], std[0]
        return mixture(mean, std, axis=0)

    def history(self, index: int | None = 0) -> dict[str, np.ndarray]:
        """The rows the twin has seen, for `env.reset(options={"history": …})`.

        `{"obs": (T, obs_dim), "action": (T, …), "is_first": (T,)}` for system `index` (or with a
        leading batch dimension for `index=None`, when every system has seen as many rows); actions
        store-aligned (action[k] taken at obs[k]), the newest row's action the one passed to the last
        `predict` (NaN, Discrete -1, where not known).
        """
        end = self._end
        if index is None:
            n = int(self._len.min())
            if n != int(self._len.max()):
                raise ValueError("Twin.history(None): systems have seen different numbers of rows; "
                                 "ask for one system at a time")
            rows = slice(end - n, end)
            return {"obs": self._obs[:, rows].copy(), "action": self._act[:, rows].copy(),
                    "is_first": self._first[:, rows].copy()}
        n = int(self._len[index])
        if n == 0:
            raise RuntimeError(f"Twin.history({index}): the twin has not observed system {index} yet")
        rows = slice(end - n, end)
        first = self._first[index, rows].copy()
        first[0] = True  # the history starts the belief, also where older rows were dropped
        return {"obs": self._obs[index, rows].copy(), "action": self._act[index, rows].copy(), "is_first": first}

    def save_history(self, path: str | os.PathLike[str], index: int = 0) -> str:
        """Write system `index`'s history as a generate.py history file (`obs` (T, D), `action` (T, A))."""
        h = self.history(index)
        action = h["action"].reshape(len(h["obs"]), -1).astype(np.float64)
        if self.discrete:
            action[action < 0] = np.nan
        # a reader never sees a half-written file
        atomic_write(os.fspath(path), lambda tmp: np.savez(tmp, obs=h["obs"], action=action, is_first=h["is_first"]))
        return str(path)

