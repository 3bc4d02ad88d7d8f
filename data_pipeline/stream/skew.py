"""`SkewGuard`: a sample whose time is far from the stream's recent time is held, then refused or, when
the samples after it agree, taken as a clock jump.

Without it one far-future timestamp (a glitching clock) would move the reorder buffer's stream time
ahead, and every later sample would arrive "late" and be dropped. The rule is relative to the
stream's own recent times, never to the wall clock: a stream may replay data recorded years ago, at
any speed (docs/live-twin.md, "Far timestamps").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipeline.stream.messages import Sample


@dataclass
class Verdict:
    """What `SkewGuard.check` decided for one sample (and for those it held before)."""

    accepted: list[Sample] = field(default_factory=list)
    """Samples to buffer, in arrival order."""
    refused: list[tuple[Sample, int]] = field(default_factory=list)
    """Held samples found to be glitches, with their message numbers."""
    jump: bool = False
    """The accepted samples confirm a clock jump: the stream continues at their time."""


class SkewGuard:
    """Hold samples more than `max_skew_ns` from the newest accepted time; refuse or accept them later.

    A far sample is held. If `confirm` held samples at distinct times agree with each other (within
    `max_skew_ns` of the first), the stream's clock jumped (forward or back, or the stream resumed
    after a long silence): they are accepted and become the new reference. A sample close to the
    reference arriving first shows the held ones were glitches: they are refused.
    """

    def __init__(self, max_skew_s: float, confirm: int = 3) -> None:
        self.max_skew_ns = round(max_skew_s * 1e9)
        self.confirm = confirm
        self.reference_ns: int | None = None
        """The newest accepted sample time."""
        self.held: list[tuple[Sample, int]] = []

    def check(self, sample: Sample, message: int) -> Verdict:
        """Decide about `sample` (from message number `message`)."""
        t = sample.time_ns
        if self.reference_ns is None or abs(t - self.reference_ns) <= self.max_skew_ns:
            self.reference_ns = t if self.reference_ns is None else max(self.reference_ns, t)
            verdict = Verdict(accepted=[sample], refused=self.held)
            self.held = []
            return verdict
        verdict = Verdict()
        if self.held and abs(t - self.held[0][0].time_ns) > self.max_skew_ns:  # far from the held ones too
            verdict.refused, self.held = self.held, []
        self.held.append((sample, message))
        if len({s.time_ns for s, _ in self.held}) >= self.confirm:
            verdict.accepted = [s for s, _ in self.held]
            verdict.jump = True
            self.reference_ns = max(s.time_ns for s in verdict.accepted)
            self.held = []
        return verdict

    def drop_held(self) -> list[tuple[Sample, int]]:
        """The samples still held (at shutdown: never confirmed), forgotten."""
        held, self.held = self.held, []
        return held
