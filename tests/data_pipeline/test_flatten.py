"""Structured observations on `record` (issue 14): Dict and Tuple spaces flattened into named channels, the
names options, and the `module:EnvId` form for a user's own env (the envs below, registered on import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from data_pipeline.__main__ import main
from data_pipeline.errors import UserError
from data_pipeline.info import validate_store
from data_pipeline.record import flat_channel_names, record
from data_pipeline.store import TrajectoryStore

MODULE = __name__  # gym.make("MODULE:EnvId") imports this module, which registers the envs


class ArmEnv(gym.Env):
    """A tiny arm: a Dict observation with a nested Dict and a Discrete mode, 5 steps per episode."""

    metadata: dict[str, Any] = {"render_fps": 20}
    observation_space = spaces.Dict({
        "position": spaces.Box(-10, 10, (2,), np.float32),
        "velocity": spaces.Box(-10, 10, (2,), np.float32),
        "sensors": spaces.Dict({"temp": spaces.Box(0, 100, (), np.float32), "load": spaces.Box(0, 1, (1,))}),
        "mode": spaces.Discrete(3),
    })
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.v = np.zeros(2, np.float32)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> dict[str, Any]:
        return {"position": self.x.copy(), "velocity": self.v.copy(), "mode": self.t % 3,
                "sensors": {"temp": np.float32(20 + self.t), "load": np.array([0.5], np.float32)}}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.v = np.clip(self.v + 0.1 * np.asarray(action, np.float32), -10, 10)
        self.x = np.clip(self.x + 0.05 * self.v, -10, 10)
        self.t += 1
        return self._obs(), -float(np.sum(self.x**2)), False, self.t >= 5, {}


class PairEnv(gym.Env):
    """A Tuple observation (a 2-vector and a MultiBinary) with a Discrete action, 4 steps per episode."""

    observation_space = spaces.Tuple((spaces.Box(-1, 1, (2,)), spaces.MultiBinary(2)))
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return (self.np_random.uniform(-1, 1, 2).astype(np.float32), np.array([1, 0], np.int8)), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return (np.full(2, 0.1 * self.t, np.float32), np.array([action, 1], np.int8)), 1.0, self.t >= 4, False, {}


class CameraEnv(PairEnv):
    observation_space = spaces.Tuple((spaces.Box(-1, 1, (2,)), spaces.Box(0, 255, (8, 8, 3), np.uint8)))


for _id, _cls in (("TwArm-v0", ArmEnv), ("TwPair-v0", PairEnv), ("TwCamera-v0", CameraEnv)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_cls)

ARM_NAMES = ["position.0", "position.1", "velocity.0", "velocity.1", "sensors.temp", "sensors.load.0",
             "mode.0", "mode.1", "mode.2"]


def test_flat_channel_names_follow_gymnasiums_flatten_order() -> None:
    space = ArmEnv.observation_space
    sample = space.sample()
    names = flat_channel_names(space)
    assert sorted(names) == sorted(ARM_NAMES) and len(names) == spaces.flatdim(space)
    flat = spaces.flatten(space, sample)
    assert flat[names.index("sensors.temp")] == pytest.approx(sample["sensors"]["temp"])
    assert flat[names.index(f"mode.{sample['mode']}")] == 1.0
    assert flat_channel_names(spaces.Box(0, 1, (2, 2))) == ["0.0", "0.1", "1.0", "1.1"]


def test_record_dict_env_by_module_id(tmp_path: Path) -> None:
    env_id = f"{MODULE}:TwArm-v0"
    out = str(tmp_path / "arm.zarr")
    record(env_id, 3, out, seed=4, progress=False, start_time=0).close()
    store = TrajectoryStore.open(out)
    assert store.schema.obs_channels == flat_channel_names(ArmEnv.observation_space)
    flattened = store.schema.provenance["flattened_observation"]
    assert flattened["channels"] == store.schema.obs_channels and flattened["by"] == "gymnasium.spaces.flatten"
    ep = store.read_episode(1)
    assert ep.num_rows == 6
    env = ArmEnv()
    first, _ = env.reset(seed=5)  # episode k is reset with seed + k
    back = spaces.unflatten(ArmEnv.observation_space, ep.obs[0])  # round trip: the channels map back
    np.testing.assert_allclose(back["position"], first["position"], rtol=1e-6)
    assert int(back["mode"]) == first["mode"] and back["sensors"]["temp"] == pytest.approx(20.0)
    assert TrajectoryStore.open(out).num_episodes == 3  # it opens and reads; validate: the test below


def test_recorded_user_env_store_validates(tmp_path: Path) -> None:
    out = str(tmp_path / "arm.zarr")
    record(f"{MODULE}:TwArm-v0", 1, out, progress=False, start_time=0).close()
    assert validate_store(out)["status"] == "ok"


def test_record_tuple_env_and_names_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "pair.zarr")
    assert main(["record", "--env", f"{MODULE}:TwPair-v0", "--episodes", "2", "--out", out, "--no-progress"]) == 0
    store = TrajectoryStore.open(out)
    assert store.schema.obs_channels == ["0.0", "0.1", "1.0", "1.1"]
    ep = store.read_episode(0)
    assert ep.num_rows == 5 and ep.obs[1:, 3].tolist() == [1.0] * 4  # MultiBinary entry 1 is set after reset
    names = tmp_path / "names.yaml"
    names.write_text("- x\n- y\n- contact_left\n- contact_right\n")
    out2 = str(tmp_path / "named.zarr")
    assert main(["record", "--env", f"{MODULE}:TwPair-v0", "--episodes", "1", "--out", out2, "--no-progress",
                 "--obs-names", str(names), "--action-names", "push"]) == 0
    named = TrajectoryStore.open(out2).schema
    assert named.obs_channels == ["x", "y", "contact_left", "contact_right"] and named.action_channels == ["push"]
    out3 = str(tmp_path / "pend.zarr")
    assert main(["record", "--env", "Pendulum-v1", "--episodes", "1", "--max-episode-steps", "3", "--out", out3,
                 "--no-progress", "--obs-names", "c,s,w", "--action-names", "tau"]) == 0
    assert TrajectoryStore.open(out3).schema.obs_channels == ["c", "s", "w"]


def test_wrong_names_and_image_sub_spaces_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--obs-names: 2 names \(a, b\); expected 4"):
        record(f"{MODULE}:TwPair-v0", 1, str(tmp_path / "a.zarr"), progress=False, obs_names=["a", "b"])
    with pytest.raises(UserError, match=r"sub-space '1' is an image"):
        record(f"{MODULE}:TwCamera-v0", 1, str(tmp_path / "b.zarr"), progress=False)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_help_shows_the_module_env_form(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["record", "--help"])
    text = capsys.readouterr().out
    assert "module:EnvId" in text and "--obs-names" in text and "--action-names" in text
