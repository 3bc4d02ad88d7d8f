"""Issue 13, "never delete what the user did not name": `--overwrite` replaces only a twinworld store of the
same kind, and an output that is also an input is refused before anything is written.

Every writer (record, ingest, Minari import, generate) is pointed with overwrite=True at a directory of user
files, a file, a symlink to a directory, a symlink to a store of its own kind and a store of the other kind:
each is refused with a message naming the path and what is there, and every byte stays (tree digest before
and after). On a store of its own kind it replaces it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import REPO, make_tiny_episodes, make_tiny_schema, subprocess_env

from data_pipeline.errors import UserError
from data_pipeline.ingest import ingest_file
from data_pipeline.record import record
from data_pipeline.store import OutputExistsError, TrajectoryStore
from data_pipeline.windows import normalization_for
from scenarios.run import generate
from scenarios.spec import ScenarioSpec, parse_spec_text
from scenarios.store import ScenarioIndex, create_scenario_store
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.interface import WorldModel

SPEC = """
    horizon: 3
    samples: 2
    seed: 0
    context: 2
    starts: [{episode: 0, t: 3}]
    interventions: {factual: {}}
"""
INGEST_SPEC = """
    timestamp: {column: t, unit: s}
    dt: 0.1
    observation: {channels: [{column: temp, unit: degC}]}
    action: {channels: [{column: heater, unit: '%', low: 0, high: 100}]}
"""


@dataclass
class World:
    """What the writers need, made once: a recorded source store, an untrained tiny model, an ingest log."""

    source: TrajectoryStore
    model: WorldModel
    spec: ScenarioSpec
    log: str
    ingest_spec: str
    model_path: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("overwrite")
    record("Pendulum-v1", 2, str(tmp / "source.zarr"), max_episode_steps=8, progress=False).close()
    source = TrajectoryStore.open(str(tmp / "source.zarr"))
    torch.manual_seed(0)
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), source.schema, normalization_for(source, [0, 1]))
    model.save(str(tmp / "model.pt"))
    t = np.round(np.arange(12) * 0.1, 6)
    (tmp / "log.csv").write_text("t,temp,heater\n" + "".join(f"{x},{20 + x},{10 * (k % 3)}\n"
                                                          for k, x in enumerate(t)))
    (tmp / "spec.yaml").write_text(textwrap.dedent(INGEST_SPEC))
    spec = parse_spec_text(textwrap.dedent(SPEC), "spec.yaml")
    return World(source, model, spec, str(tmp / "log.csv"), str(tmp / "spec.yaml"), str(tmp / "model.pt"))


def write_record(world: World, out: Path, overwrite: bool) -> None:
    record("Pendulum-v1", 1, str(out), max_episode_steps=3, overwrite=overwrite, progress=False).close()


def write_ingest(world: World, out: Path, overwrite: bool) -> None:
    ingest_file("csv", world.log, world.ingest_spec, str(out), overwrite=overwrite).close()


def write_generate(world: World, out: Path, overwrite: bool) -> None:
    generate(world.spec, world.model, world.source, out, attrs={}, overwrite=overwrite, progress=False)


WRITERS: dict[str, Callable[[World, Path, bool], None]] = {
    "record": write_record, "ingest": write_ingest, "generate": write_generate}
KIND = {"record": "trajectory", "ingest": "trajectory", "minari": "trajectory", "generate": "scenario"}


# ------------------------------------------------------------------ what the user has at --out
def trajectory_store(path: Path) -> None:
    schema = make_tiny_schema()
    with TrajectoryStore.create(str(path), schema) as store:
        store.append(make_tiny_episodes(schema, 2, 0, 1, 5))


def scenario_store(path: Path) -> None:
    schema = make_tiny_schema()
    index = ScenarioIndex(["s/f"], ["s"], ["f"], [0], ["e0"], [1], [0])
    create_scenario_store(path, index, schema, samples=1, horizon=2, block=1, attrs={})


def user_files(path: Path) -> None:
    (path / "data").mkdir(parents=True)
    (path / "notes.txt").write_text("calibration notes, not a store\n")
    (path / "data" / "readings.csv").write_text("t,x\n0,1\n")


def make_victim(case: str, kind: str, area: Path) -> Path:
    """`area/out` as the case says; a symlink's target lies in `area` too, so the digest covers it."""
    out = area / "out"
    if case == "user_files":
        user_files(out)
    elif case == "file":
        out.write_bytes(b"a user's file\n" * 10)
    elif case == "symlink_to_dir":
        user_files(area / "elsewhere")
        out.symlink_to(area / "elsewhere", target_is_directory=True)
    elif case == "symlink_to_store":
        (trajectory_store if kind == "trajectory" else scenario_store)(area / "elsewhere.zarr")
        out.symlink_to(area / "elsewhere.zarr", target_is_directory=True)
    elif case == "other_kind":
        (scenario_store if kind == "trajectory" else trajectory_store)(out)
    return out


def digest(root: Path) -> dict[str, str]:
    """Every entry under `root`, symlinks as their target (never followed), files as the hash of their bytes;
    writer-lock files (left beside a store by whoever tried to write it) aside."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + [f for f in files if not f.endswith(".writer-lock")]:
            p = Path(folder) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                found[rel] = "dir"
    return found


EXPECTED = {
    "user_files": "(it holds 2 entries: data/, notes.txt)",
    "file": "is a file (140 bytes)",
    "symlink_to_dir": "is a symbolic link (to ",
    "symlink_to_store": "is a symbolic link (to ",
    "other_kind": "(it is a twinworld {other} store)",
}


@pytest.mark.parametrize("case", list(EXPECTED))
@pytest.mark.parametrize("writer", list(WRITERS))
def test_overwrite_refuses_what_is_not_a_store_of_its_kind(world: World, tmp_path: Path, writer: str,
                                                           case: str) -> None:
    kind = KIND[writer]
    area = tmp_path / "area"
    area.mkdir()
    out = make_victim(case, kind, area)
    before = digest(area)
    with pytest.raises(OutputExistsError) as err:
        WRITERS[writer](world, out, True)
    message = str(err.value)
    other = "scenario" if kind == "trajectory" else "trajectory"
    assert message.startswith(str(out)), message
    assert EXPECTED[case].format(other=other) in message, message
    if case in ("user_files", "other_kind"):
        assert f"is not a twinworld {kind} store" in message and "remove it yourself" in message, message
    assert digest(area) == before  # every byte, every link, still there


@pytest.mark.parametrize("writer", list(WRITERS))
def test_overwrite_replaces_a_store_of_its_kind(world: World, tmp_path: Path, writer: str) -> None:
    out = tmp_path / "out.zarr"
    (trajectory_store if KIND[writer] == "trajectory" else scenario_store)(out)
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        WRITERS[writer](world, out, False)
    WRITERS[writer](world, out, True)
    if KIND[writer] == "trajectory":
        assert TrajectoryStore.open(str(out)).schema.obs_channels != make_tiny_schema().obs_channels
    else:
        attrs = zarr.open_group(str(out), mode="r").attrs
        assert attrs["complete"] and attrs["horizon"] == 3 and attrs["title"] == "twinworld scenario store"


def test_minari_import_refuses_user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    minari = pytest.importorskip("minari")
    pytest.importorskip("jax", reason="Minari's DataCollector needs jax (minari[create])")
    import gymnasium as gym

    from data_pipeline.minari_io import import_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = minari.DataCollector(gym.make("Pendulum-v1", max_episode_steps=3), data_format="arrow",
                               record_infos=False)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    env.create_dataset("tests/overwrite-v0", eval_env="Pendulum-v1", algorithm_name="random", author="tests",
                       author_email="t@example.org", code_permalink="tests/security", description="tests")
    env.close()
    for case in ("user_files", "other_kind", "symlink_to_dir"):
        area = tmp_path / case
        area.mkdir()
        out = make_victim(case, "trajectory", area)
        before = digest(area)
        with pytest.raises(OutputExistsError, match=re.escape(EXPECTED[case].format(other="scenario"))):
            import_minari("tests/overwrite-v0", str(out), overwrite=True)
        assert digest(area) == before
    trajectory_store(tmp_path / "same.zarr")
    import_minari("tests/overwrite-v0", str(tmp_path / "same.zarr"), overwrite=True).close()
    assert TrajectoryStore.open(str(tmp_path / "same.zarr")).num_steps == 4


def test_object_storage_is_checked_too(tmp_path: Path) -> None:
    """A memory:// prefix holding user objects is not a store either."""
    import fsspec

    url = f"memory://{tmp_path.name}/out.zarr"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{url}/notes.txt", b"user data")
    with pytest.raises(OutputExistsError, match=r"is not a twinworld trajectory store \(it holds 1 entry: notes.txt"):
        TrajectoryStore.create(url, make_tiny_schema(), overwrite=True)
    assert fs.cat(f"{url}/notes.txt") == b"user data"
    fs.rm(url, recursive=True)
    trajectory_store_url = f"memory://{tmp_path.name}/store.zarr"
    TrajectoryStore.create(trajectory_store_url, make_tiny_schema()).close()
    TrajectoryStore.create(trajectory_store_url, make_tiny_schema(), overwrite=True).close()
    fs.rm(trajectory_store_url, recursive=True)


def test_cli_record_overwrite_refuses_user_files(tmp_path: Path) -> None:
    """The command line says the same in one line, and exits 1."""
    out = tmp_path / "out"
    user_files(out)
    before = digest(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "data_pipeline", "record", "--env", "Pendulum-v1", "--episodes",
                           "1", "--max-episode-steps", "3", "--out", str(out), "--overwrite", "--no-progress"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{out} is not a twinworld trajectory store (it holds 2 entries: data/, notes.txt)" in proc.stderr
    assert digest(tmp_path) == before


# ------------------------------------------------------------------ an output that is also an input
@pytest.mark.parametrize("spelling", ["same", "dot_slash", "trailing_slash", "symlink", "file_url", "local_url",
                                      "inside", "holds"])
def test_generate_out_equal_to_store_is_refused(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                spelling: str) -> None:
    shutil.copytree(world.source.path, tmp_path / "p.zarr")
    store = tmp_path / "p.zarr"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.zarr").symlink_to(store, target_is_directory=True)
    out = {"same": str(store), "dot_slash": "./p.zarr", "trailing_slash": "p.zarr/", "symlink": "link.zarr",
           "file_url": f"file://{store}", "local_url": "local://p.zarr", "inside": "p.zarr/scenarios.zarr",
           "holds": str(tmp_path)}[spelling]
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC))
    before = digest(tmp_path)
    import generate as generate_cli

    with pytest.raises(OutputExistsError, match="the input --store") as err:
        generate_cli.main(["--config", "spec.yaml", "--model", world.model_path, "--store", "p.zarr", "--out", out,
                           "--overwrite", "--no-mlflow", "--no-progress", "--accelerator", "cpu"])
    assert f"--out {out} " in str(err.value) and "nothing was written" in str(err.value)
    with pytest.raises(OutputExistsError, match="the input --store"):  # the library entry point checks too
        generate(world.spec, world.model, TrajectoryStore.open(str(store)), out, attrs={}, overwrite=True,
                 progress=False)
    assert digest(tmp_path) == before


# ------------------------------------------------------------------ demo.py --out
@pytest.mark.parametrize("case", ["user_files", "file", "symlink_to_dir"])
def test_demo_refuses_an_out_that_is_no_demo_output(tmp_path: Path, case: str) -> None:
    """demo.py used to `rmtree(--out)` first; now a folder without its marker is refused before anything runs."""
    import demo

    area = tmp_path / "area"
    area.mkdir()
    out = make_victim(case, "trajectory", area)
    before = digest(area)
    with pytest.raises(UserError, match=re.escape(f"--out {out} is ")) as err:
        demo.main(["--quick", "--out", str(out)])
    assert {"user_files": "no earlier demo output", "file": "is a file", "symlink_to_dir": "symbolic link"}[case] \
        in str(err.value)
    assert digest(area) == before


def test_demo_replaces_only_its_own_outputs(tmp_path: Path) -> None:
    import demo

    out = tmp_path / "demo_out"
    demo.prepare_out(out)  # a new folder gets the marker
    assert (out / demo.MARKER).is_file()
    user_files(out / "runs")  # the demo's own outputs (whatever they hold) ...
    (out / "scenarios.summary.csv").write_text("old")
    (out / "my_notes.txt").write_text("mine")  # ... and a file the user put beside them
    demo.prepare_out(out)
    assert sorted(p.name for p in out.iterdir()) == [demo.MARKER, "my_notes.txt"]
