"""Outcome checks of a scenario spec: the condition grammar and the probabilities over samples.

A condition is `[abs(]<channel>[)] <op> <number>` with op one of > >= < <=, matched by a regular
expression: nothing in a spec is ever evaluated as code. `ScenarioSpecError` lives here, the bottom
of the spec's modules, and is re-exported by scenarios.spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from data_pipeline.specfile import Spec, SpecError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONDITION = re.compile(rf"^\s*(abs\(\s*(?P<abs>[A-Za-z_][\w.]*)\s*\)|(?P<name>[A-Za-z_][\w.]*))\s*"
                        rf"(?P<op>>=|<=|>|<)\s*(?P<value>{_NUMBER})\s*$")
CONDITION_GRAMMAR = ("expected '<channel> <op> <number>' or 'abs(<channel>) <op> <number>' with op one of "
                     "> >= < <=")


class ScenarioSpecError(SpecError):
    """A scenario spec is malformed: the message names the file, the key path and what was expected."""


@dataclass(frozen=True)
class Condition:
    """`[abs(]channel[)] op value`, parsed from text without evaluating it."""

    channel: str
    op: str
    value: float
    absolute: bool = False

    @classmethod
    def parse(cls, text: str, key: str) -> Condition:
        """The condition of `text`; a ScenarioSpecError naming `key` if it is not in the grammar."""
        condition = _match(text)
        if condition is None:
            raise ScenarioSpecError(f"{key}: condition {text!r}; {CONDITION_GRAMMAR}")
        return condition

    def holds(self, values: np.ndarray) -> np.ndarray:
        x = np.abs(values) if self.absolute else values
        with np.errstate(invalid="ignore"):
            if self.op == ">":
                return np.asarray(x > self.value)
            if self.op == ">=":
                return np.asarray(x >= self.value)
            if self.op == "<":
                return np.asarray(x < self.value)
            return np.asarray(x <= self.value)

    def __str__(self) -> str:
        name = f"abs({self.channel})" if self.absolute else self.channel
        return f"{name} {self.op} {self.value:g}"


def _match(text: object) -> Condition | None:
    match = _CONDITION.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    name = match["abs"] or match["name"]
    return Condition(channel=name, op=match["op"], value=float(match["value"]), absolute=match["abs"] is not None)


def _condition(value: Any) -> Condition:
    """Pydantic hook: a spec's condition text to a Condition (a Condition passes through)."""
    if isinstance(value, Condition):
        return value
    condition = _match(value)
    if condition is None:
        raise PydanticCustomError("condition", CONDITION_GRAMMAR)
    return condition


class Outcome(Spec):
    """A named check reported as a probability over samples: the condition holds at `any` time, at the
    `end`, or (`fraction`) the expected fraction of time it holds. Its name is the spec's key."""

    condition: Annotated[Condition, BeforeValidator(_condition)]
    when: Literal["any", "end", "fraction"] = "any"
    _name: str = PrivateAttr("")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """`name: "theta_dot < -3"` is short for `name: {condition: "theta_dot < -3"}`."""
        return {"condition": data} if isinstance(data, str) else data

    @property
    def name(self) -> str:
        return self._name

    def probability(self, values: np.ndarray) -> np.ndarray:
        """(n, samples, time) values of the condition's channel -> (n,) probabilities."""
        holds = self.condition.holds(values)
        if self.when == "any":
            per_sample = holds.any(-1)
        elif self.when == "end":
            per_sample = holds[..., -1]
        else:
            per_sample = holds.mean(-1)
        return np.asarray(per_sample.mean(-1), np.float64)
