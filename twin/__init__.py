"""The live twin: belief sync, anomaly scores and the live mirror of a stream (docs/live-twin.md).

| module | job |
| --- | --- |
| `twin.sync` | `Twin`: a world model's belief about B running systems, one real step at a time; its history |
| `twin.anomaly` | surprise scores, their moving window and alert flag; the threshold's calibration |
| `twin.calibrate` | the command `python -m twin.calibrate` (alias `python -m worldmodel.anomaly`) |
| `twin.scores` | `ScoreStore`: the scores in a Zarr v3 group beside the trajectory store (`NAME.anomaly.zarr`) |
| `twin.mirror` | `LiveMirror`: feeds the stream's new rows to the twin, scores them, raises alerts; `LiveStats` |
| `twin.alerts` | alert sinks: stdout, and an MQTT topic when asked |
| `twin.opcua_publish` | `OpcUaPublisher`: the latest score, alert and prediction to the twin's own OPC UA nodes |
| `twin.mlflow_log` | `MlflowLog`: aggregated live metrics to MLflow through `tracking.logger` |
| `twin.live` | the command `python -m twin.live` (alias `python -m envs.live`): stream + twin + scores |
| `twin.dashboard` | the command `python -m twin.dashboard`: the operators' web page (live, scenarios, data and model) |
| `twin.mcp` | the twin as an MCP server for AI agents, `python -m twin.mcp` (its own table; docs/agents.md) |

Imports point down: `live` → `alerts`, `mlflow_log` → `mirror` → `scores`, `sync` → `anomaly`. The two
commands (`live`, `calibrate`) are imported by no other module here, so `python -m` runs each once;
`dashboard` sits on top of `live` (it runs the live mirror in a thread) and is imported by nothing here.
"""

from twin.anomaly import (
    AnomalyConfig,
    AnomalyError,
    AnomalyScorer,
    Calibration,
    ScoreStep,
    calibrate,
    score_episodes,
)
from twin.mirror import LiveMirror, LiveStats
from twin.mlflow_log import MlflowLog
from twin.scores import ScoreStore
from twin.sync import Twin

__all__ = ["AnomalyConfig", "AnomalyError", "AnomalyScorer", "Calibration", "LiveMirror", "LiveStats", "MlflowLog",
           "ScoreStep", "ScoreStore", "Twin", "calibrate", "score_episodes"]
