"""The MCP server: the twin's tools and resources, registered with the official SDK's `MCPServer`.

Each tool has a typed signature (its JSON schema, with a description per argument) and a typed result
(twin.mcp.results). Each call runs in a worker thread under the server's limits (twin.mcp.limits); a
user error (a bad spec, an unknown channel, a request over a cap, a timeout) comes back as a tool error
(isError, one clear message), and the server carries on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from data_pipeline.errors import UserError
from twin.mcp import results as r
from twin.mcp.limits import MAX_CONTEXT, Runner
from twin.mcp.tools import TwinTools

T = TypeVar("T")

INSTRUCTIONS = """A digital twin of a physical system: a learned world model and the recorded data it mirrors.
Start with describe_twin (channels, units, bounds, dt, limits), then current_state. simulate takes a scenario
spec (the YAML schema of generate.py, as JSON: docs/scenarios.md); compare_interventions ranks interventions
from one start by an outcome; recommend_intervention plans actions. All answers are advice: no tool acts on
the plant. Calls are capped in samples x horizon and time; a refused call says which cap to respect."""

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
"""Every tool only reads the twin (simulate writes its results under the server's own output folder)."""

EpisodeArg = Annotated[int | str | None, Field(
    description="start episode: position in the store's episode table or its id (default: the newest episode)")]
RowArg = Annotated[int | None, Field(ge=0, description="start row inside the episode (default: its last row)")]
Seed = Annotated[int, Field(ge=0, description="random seed (same seed, same answer)")]
Context = Annotated[int, Field(ge=1, le=MAX_CONTEXT, description="recorded rows the twin assimilates before the start")]


def build_server(tools: TwinTools) -> MCPServer:
    """The MCP server of a twin: five tools, two resources (data card, model card)."""
    app: MCPServer = MCPServer("twinworld", instructions=INSTRUCTIONS)
    runner = Runner(tools.limits)

    async def call(fn: Callable[[], T]) -> T:
        try:
            return await runner.run(fn)
        except (UserError, ValueError, LookupError, OSError) as err:
            raise ToolError(" ".join(str(err).split()) or type(err).__name__) from None

    @app.tool(annotations=READ_ONLY)
    async def describe_twin() -> r.TwinDescription:
        """The twin: observed and actuator channels with units and bounds, dt, the model kind and config,
        the data card of the store, the anomaly calibration, identified physics (hybrid models), the
        policy offered and the compute caps of every call."""
        return await call(tools.describe)

    @app.tool(annotations=READ_ONLY)
    async def current_state() -> r.CurrentState:
        """The newest mirrored observation, the twin's belief about the next one (mean, std, model
        uncertainty) and the anomaly score of the recent rows with its threshold and each channel's surprise."""
        return await call(tools.current_state)

    @app.tool(annotations=READ_ONLY)
    async def simulate(
        spec: Annotated[dict[str, Any], Field(description=(
            "a scenario spec as JSON, the schema of generate.py's YAML (docs/scenarios.md): horizon, samples, "
            "seed, context, starts ([{episode, t}], [{sample: N}], [{episode, every}]), interventions "
            "({name: {constant|schedule|scale|offset|obs_offset|policy}}), outcomes ({name: 'abs(ch) > 3'}), "
            "summary ({channels, times}); every start x every intervention is one scenario"))],
    ) -> r.SimulateResult:
        """Imagine the scenarios of a spec: per scenario the summary quantiles (q05/q50/q95, mean and the
        recorded future per channel and step), outcome probabilities, the calibration of the factual
        scenarios, and the paths of fan chart PNGs (under the server's output folder)."""
        return await call(lambda: tools.simulate(spec))

    @app.tool(annotations=READ_ONLY)
    async def compare_interventions(
        interventions: Annotated[dict[str, dict[str, Any]], Field(description=(
            "candidates {name: intervention} in the spec's form, e.g. {\"push\": {\"constant\": {\"torque\": 2}}}; "
            "the factual replay is added as 'factual' for reference"))],
        outcome: Annotated[str, Field(description="the ranking outcome: '<channel> <op> <number>' or "
                                                  "'abs(<channel>) <op> <number>', op one of > >= < <=")],
        when: Annotated[Literal["any", "end", "fraction"], Field(
            description="the outcome holds at any step, at the end, or the fraction of steps it holds")] = "any",
        lower_is_better: Annotated[bool, Field(description="rank the lowest probability first")] = True,
        episode: EpisodeArg = None,
        t: RowArg = None,
        horizon: Annotated[int, Field(ge=1, description="imagined steps")] = 30,
        samples: Annotated[int, Field(ge=1, description="imagined futures per intervention")] = 64,
        context: Context = 8,
        seed: Seed = 0,
    ) -> r.Comparison:
        """Several candidate interventions from one start, ranked by the probability of an outcome, each
        with its standard error, a 90% interval, the difference to the factual replay and its quantiles."""
        return await call(lambda: tools.compare(
            interventions, outcome, when=when, lower_is_better=lower_is_better, episode=episode, t=t,
            horizon=horizon, samples=samples, context=context, seed=seed))

    @app.tool(annotations=READ_ONLY)
    async def recommend_intervention(
        episode: EpisodeArg = None,
        t: RowArg = None,
        horizon: Annotated[int, Field(ge=1, description="steps of the plan")] = 20,
        samples: Annotated[int, Field(ge=1, description="imagined futures per plan")] = 16,
        avoid: Annotated[str | None, Field(description=(
            "an outcome to avoid, e.g. 'abs(theta_dot) > 6'; plans are ranked by its probability first, "
            "then by predicted return"))] = None,
        method: Annotated[Literal["auto", "policy", "cem"], Field(description=(
            "'policy': the server's trained policy in closed loop; 'cem': plan in the model (cross-entropy "
            "method); 'auto': the policy where the server has one"))] = "auto",
        population: Annotated[int, Field(ge=2, le=256, description="CEM candidate plans per iteration")] = 32,
        iterations: Annotated[int, Field(ge=1, le=10, description="CEM iterations")] = 3,
        context: Context = 8,
        seed: Seed = 0,
    ) -> r.Recommendation:
        """An action plan from a start and its predicted outcome (return, probability of the outcome to
        avoid, final state quantiles) beside the outcome of holding the recorded actions. Advice only:
        nothing is sent to the plant."""
        return await call(lambda: tools.recommend(
            episode=episode, t=t, horizon=horizon, samples=samples, avoid=avoid, method=method,
            population=population, iterations=iterations, context=context, seed=seed))

    @app.resource("twin://data-card", mime_type="application/json", description="the store's data card")
    def data_card() -> str:
        return json.dumps(tools.data_card(), indent=1)

    @app.resource("twin://model-card", mime_type="application/json", description="the world model's card")
    def model_card() -> str:
        return json.dumps(tools.model_card(), indent=1)

    return app
