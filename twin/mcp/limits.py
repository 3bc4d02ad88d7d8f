"""What one tool call of the MCP server may cost: caps on samples, horizon and imagined steps, and a
wall-clock timeout, so an agent can never make the server spend unbounded compute.

A request over a cap is refused before any model call, with a message naming the cap and the request.
The timeout ends the call with a tool error; the computation it abandoned finishes in its thread (it is
bounded by the caps), and calls that arrive meanwhile are refused as busy rather than queued.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import anyio
import anyio.to_thread

from data_pipeline.errors import UserError

T = TypeVar("T")


MAX_CONTEXT = 256
"""Recorded rows a call may assimilate before its start (a spec's `context`, the tools' `context`): the rows are
read into memory whole, so an agent's `context: 1e9` must be refused before they are."""


class LimitError(UserError, ValueError):
    """A request over one of the server's compute caps, or a call that ran past the timeout."""


@dataclass(frozen=True)
class Limits:
    """The caps of one tool call (the server's `--max-*` and `--timeout` options)."""

    max_samples: int = 256
    """Imagined futures per scenario or per candidate plan."""
    max_horizon: int = 200
    """Imagined steps per future."""
    max_scenarios: int = 32
    """Scenarios (starts × interventions) per call."""
    max_steps: int = 200_000
    """Imagined steps per call, all scenarios, samples and planning iterations together."""
    timeout_s: float = 60.0
    """Wall-clock seconds a call may take before it ends with a tool error."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise LimitError(f"--{name.replace('_', '-')} {value}; expected a positive number")

    def check(self, *, samples: int, horizon: int, scenarios: int = 1, repeats: int = 1) -> int:
        """Refuse a request over the caps; return its imagined steps (samples × horizon × scenarios × repeats)."""
        if samples > self.max_samples:
            raise LimitError(f"samples {samples} is over the server's cap of {self.max_samples} "
                             "(--max-samples); ask for fewer samples")
        if horizon > self.max_horizon:
            raise LimitError(f"horizon {horizon} is over the server's cap of {self.max_horizon} "
                             "(--max-horizon); ask for a shorter horizon")
        if scenarios > self.max_scenarios:
            raise LimitError(f"{scenarios} scenarios (starts × interventions) is over the server's cap of "
                             f"{self.max_scenarios} (--max-scenarios); ask for fewer starts or interventions")
        steps = samples * horizon * scenarios * repeats
        if steps > self.max_steps:
            raise LimitError(f"{scenarios} scenario(s) × {samples} samples × {horizon} steps"
                             f"{f' × {repeats} planning evaluations' if repeats > 1 else ''} = {steps} imagined "
                             f"steps, over the server's cap of {self.max_steps} per call (--max-steps); "
                             "lower samples, horizon or the number of scenarios")
        return steps


class Runner:
    """Runs one tool computation at a time in a worker thread, under the wall-clock timeout."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._busy = threading.Lock()

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` in a thread; a LimitError if another computation is still running or this one times out."""

        def guarded() -> T:
            if not self._busy.acquire(blocking=False):
                raise LimitError("the server is still finishing an earlier computation (one runs at a "
                                 "time); try again in a few seconds")
            try:
                return fn()
            finally:
                self._busy.release()

        try:
            with anyio.fail_after(self.limits.timeout_s):
                return await anyio.to_thread.run_sync(guarded, abandon_on_cancel=True)
        except TimeoutError:
            raise LimitError(f"ran past the server's timeout of {self.limits.timeout_s:g} s (--timeout); "
                             "ask for fewer samples, a shorter horizon or fewer scenarios") from None
