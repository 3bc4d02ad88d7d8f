"""The one config system: YAML read safely, pydantic validation, one-line errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from data_pipeline.specfile import Spec, SpecError, load_spec_file, parse_yaml, validate_spec


class Channel(Spec):
    column: str
    """the column of the log that holds this channel"""
    low: float = 0.0


class Plant(Spec):
    channels: list[Channel]
    groups: dict[str, Channel] = {}
    dt: float = Field(1.0, gt=0)


def test_valid_spec_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text("channels:\n  - {column: a, low: -1}\ndt: 0.5\n")
    spec = load_spec_file(Plant, path)
    assert spec.channels[0].column == "a" and spec.channels[0].low == -1.0 and spec.dt == 0.5


@pytest.mark.parametrize(("data", "message"), [
    ({"channels": [{"column": "a", "low": "abc"}]},
     "plant.yaml: key 'channels.0.low' is 'abc'; input should be a valid number"),
    ({"channels": [{"column": "a", "lo": 1}]},
     "plant.yaml: key 'channels.0.lo' is not a known key (check its spelling); expected one of ['column', 'low']"),
    ({"chanels": []}, "plant.yaml: key 'chanels' is not a known key (check its spelling); "
                      "expected one of ['channels', 'dt', 'groups']"),
    ({"channels": [{}]},
     "plant.yaml: key 'channels.0.column' is missing (the column of the log that holds this channel)"),
    ({"channels": [], "dt": -1}, "plant.yaml: key 'dt' is -1; input should be greater than 0"),
    ({"channels": [], "groups": {"x": {"colum": "a"}}}, "plant.yaml: key 'groups.x.colum' is not a known key"),
])
def test_errors_name_file_key_found_and_expected(data: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(Plant, data, "plant.yaml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_yaml_refuses_duplicate_keys_and_object_tags() -> None:
    with pytest.raises(SpecError, match=r"^s.yaml:2: duplicate key 'a'"):
        parse_yaml("a: 1\na: 2\n", "s.yaml")
    with pytest.raises(SpecError, match=r"^s.yaml:1: could not determine a constructor"):
        parse_yaml("a: !!python/object/apply:os.system [echo pwned]\n", "s.yaml")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec_file(Plant, tmp_path / "missing.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"channels: \xff\xfe\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec_file(Plant, bad)
