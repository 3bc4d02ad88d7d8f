"""An anomaly calibration file (`--calibration` of twin.live, the dashboard and the MCP server) that is not
what `python -m twin.calibrate` writes is one line naming the file and key: a NaN threshold silenced every
alert without a word (NaN > x is never true), a string threshold failed mid-stream, and a config with an
unknown key was a TypeError traceback at start."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from twin.anomaly import AnomalyError, Calibration

GOOD: dict[str, Any] = {"threshold": 4.2, "false_alarm_rate": 0.01, "config": {"window": 3}, "steps": 100}


@pytest.mark.parametrize(("data", "message"), [
    ({**GOOD, "threshold": math.nan}, "threshold is nan; expected a finite number"),
    ({**GOOD, "threshold": math.inf}, "threshold is inf; expected a finite number"),
    ({**GOOD, "threshold": "4.2"}, "threshold is '4.2'; expected a finite number"),
    ({**GOOD, "threshold": True}, "threshold is True; expected a finite number"),
    ({**GOOD, "false_alarm_rate": None}, "false_alarm_rate is None; expected a finite number"),
    ({**GOOD, "config": {"window": 3, "evil": 1}}, "config .* is not an anomaly config"),
    ({**GOOD, "config": ["window"]}, "config .* is not an anomaly config"),
    (["threshold", "false_alarm_rate"], "holds a JSON list; expected the object"),
], ids=["nan", "inf", "string", "bool", "null-rate", "unknown-config-key", "config-list", "list"])
def test_a_calibration_file_that_twin_calibrate_did_not_write_is_named(tmp_path: Path, data: Any,
                                                                        message: str) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))  # json.dumps writes NaN and Infinity, as Python's json reads them
    with pytest.raises(AnomalyError, match=f"{path}: {message}"):
        Calibration.load(path)


def test_a_good_calibration_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(GOOD))
    calibration = Calibration.load(path)
    assert calibration.threshold == 4.2 and calibration.anomaly_config().window == 3
