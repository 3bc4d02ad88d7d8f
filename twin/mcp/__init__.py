"""The twin as an MCP server for AI agents: `python -m twin.mcp` (docs/agents.md).

| module | job |
| --- | --- |
| `limits` | `Limits`: caps on samples, horizon, imagined steps and time per call; `Runner` runs calls under them |
| `results` | the typed answers of the tools (pydantic: each tool's output schema) |
| `state` | `latest_state`: the newest committed row, the twin's belief, the anomaly score of the recent rows |
| `live` | `LiveFeed`: `--live SOURCE` mirrored (read only) into the server's own store for `current_state` |
| `planning` | action plans from one start: CEM in the learned model, or a trained policy in closed loop |
| `tools` | `TwinTools`: model, store and output folder; one method per tool, no MCP in it |
| `server` | `build_server`: the tools and resources registered with the SDK's `MCPServer` |
| `__main__` | the command `python -m twin.mcp` (stdio, or streamable HTTP on 127.0.0.1) |

Imports point down: `__main__` → `server` → `tools` → `live`, `planning`, `state` → `results`, `limits`.
"""
