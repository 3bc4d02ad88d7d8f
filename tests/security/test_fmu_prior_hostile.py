"""`python -m worldmodel.fmu_prior` with a horizon or a window count below 1 is one line naming the option,
before the FMU is loaded: before, `--horizon 0` and `--windows 0` reached numpy and ended in a traceback
after the FMU had been instantiated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from data_pipeline.errors import InputError
from worldmodel.fmu_prior import main


@pytest.mark.parametrize(("option", "value"), [("--horizon", "0"), ("--windows", "0"), ("--windows", "-3")])
def test_a_count_below_one_is_named(tmp_path: Path, option: str, value: str) -> None:
    with pytest.raises(InputError, match=f"{option} {value}: expected a positive number"):
        main(["--fmu", str(tmp_path / "osc.fmu"), "--config", str(tmp_path / "c.yaml"), "--store",
              str(tmp_path / "s.zarr"), option, value])


@pytest.mark.slow
def test_the_command_line_says_it_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "worldmodel.fmu_prior", "--fmu", "osc.fmu", "--config", "c.yaml",
                           "--store", "s.zarr", "--horizon", "0"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("python -m worldmodel.fmu_prior: error: --horizon 0: expected a "
                                                    "positive number of steps")
