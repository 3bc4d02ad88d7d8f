"""Spec files (ingest specs, scenario specs, policy and model configs): YAML read safely, validated by
pydantic, with errors a person can act on.

The one config system of twinworld: every spec is a pydantic v2 model with `extra="forbid"` (a
misspelt key is an error, never silently dropped), read with `load_spec_file` or validated from data
already parsed with `validate_spec`. Errors are one `SpecError` line naming the file, the key path,
what was found and what was expected:

    plant.yaml: key 'groups.observation.channels.0.low' is 'abc'; expected a number
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from data_pipeline.errors import UserError

M = TypeVar("M", bound=BaseModel)


class SpecError(UserError, ValueError):
    """A spec file or spec data is malformed: the message names the file, the key and what was expected."""


class Spec(BaseModel):
    """Base of every spec model: unknown keys are errors, defaults are validated too, and a field's
    docstring is its description (shown in `--help` and in "missing key" errors). Models that must not
    coerce strings to numbers declare their fields strict."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no Python objects are built) that refuses duplicate keys, which PyYAML
    would otherwise resolve silently by keeping the last one."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (each key may appear once)", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str = "<spec>") -> Any:
    """Parse YAML text safely (no tags that build objects, no duplicate keys); errors name source and line."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise SpecError(f"{where}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{source}: not valid YAML ({err})") from None


def read_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing or unreadable file is a SpecError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read ({err.strerror})") from None
    return parse_yaml(text, str(path))


def key_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """A pydantic error location as a dotted key path (`groups.observation.channels.0.low`)."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    path = ".".join(parts)
    if prefix:
        return f"{prefix}.{path}" if path else prefix
    return path or "<top level>"


def _walk(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> tuple[type[BaseModel] | None, Any]:
    """Follow an error location through nested spec models: (the model the location ends in, the
    FieldInfo of its last named field). List indices and mapping keys keep the current model."""
    field = None
    for part in loc:
        if model is not None and isinstance(part, str) and part in model.model_fields:
            field = model.model_fields[part]
            model = _inner_model(field.annotation)
    return model, field


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The spec model inside an annotation (`X`, `list[X]`, `dict[str, X]`, `X | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError, source: str, prefix: str = "",
                            model: type[BaseModel] | None = None) -> str:
    """The first error of a pydantic ValidationError as one line: file, key, what was found, what is expected."""
    errors = err.errors(include_url=False)
    # A misspelt key also shows up as the right key "missing": name the misspelling first.
    first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    loc = tuple(first["loc"])
    key = key_path(loc, prefix)
    found = first.get("input")
    message = str(first["msg"])
    if first["type"] == "extra_forbidden":
        parent, _ = _walk(model, loc)
        allowed = f"; expected one of {sorted(parent.model_fields)}" if parent is not None else ""
        return f"{source}: key '{key}' is not a known key (check its spelling){allowed}"
    if first["type"] == "missing":
        _, field = _walk(model, loc)
        what = f" ({field.description})" if field is not None and field.description else ""
        return f"{source}: key '{key}' is missing{what}"
    more = len(err.errors()) - 1
    tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{source}: key '{key}' is {found!r}; {message[0].lower() + message[1:]}{tail}"


def validate_spec(model: type[M], data: Any, source: str = "<spec>", prefix: str = "",
                  error: type[SpecError] = SpecError) -> M:
    """Validate parsed data against a spec model; raise `error` (a SpecError) with one clear line."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise error(format_validation_error(err, source, prefix, model)) from None


def load_spec_file(model: type[M], path: str | Path, error: type[SpecError] = SpecError) -> M:
    """Read a YAML spec file and validate it against `model`."""
    data = read_yaml(path)
    return validate_spec(model, data, str(path), error=error)
