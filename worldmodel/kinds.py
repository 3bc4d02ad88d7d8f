"""The one table of model kinds, and model configs built from user data or a model file.

`MODEL_KINDS` maps each `kind` (the YAML's `model.kind`, the model file's `model_type`) to its model
class and config dataclass. Adding a model means adding one line here; nothing registers itself.

Configs are dataclasses validated by jsonargparse (the library LightningCLI parses `train.py` with):
a key that is not a field is an error naming the key path and the allowed keys, and a value of the
wrong type names the key and the type expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields, replace
from typing import Any, Literal, get_args

from jsonargparse import ArgumentParser

from data_pipeline.errors import UserError
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Normalization
from worldmodel.base import ModelBase
from worldmodel.diffusion import DiffusionConfig, DiffusionWorldModel
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.hybrid import HybridConfig, HybridWorldModel
from worldmodel.rssm import RSSMConfig, RSSMWorldModel

ModelKind = Literal["ensemble", "rssm", "diffusion", "hybrid"]

MODEL_KINDS: dict[str, tuple[type[ModelBase[Any]], type[Any]]] = {
    "ensemble": (EnsembleWorldModel, EnsembleConfig),
    "rssm": (RSSMWorldModel, RSSMConfig),
    "diffusion": (DiffusionWorldModel, DiffusionConfig),
    "hybrid": (HybridWorldModel, HybridConfig),
}
assert set(MODEL_KINDS) == set(get_args(ModelKind)), "ModelKind and MODEL_KINDS must name the same kinds"

PRESET_KEY = "preset"


class ConfigError(UserError, ValueError):
    """A model config key or value is wrong: the message names the key path and what was expected."""


def model_classes(kind: str) -> tuple[type[ModelBase[Any]], type[Any]]:
    """The model class and config class of `kind`."""
    if kind not in MODEL_KINDS:
        raise ConfigError(f"model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind]


def _checked_fields(config_cls: type[Any], data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`data` validated against the dataclass's field types by jsonargparse; only the given keys."""
    names = [f.name for f in fields(config_cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'{where}.{k}' for k in unknown)} for {config_cls.__name__}; "
                          f"expected some of {sorted(names)}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(config_cls, "config", fail_untyped=False)
    try:
        parsed = parser.parse_object({"config": dict(data)})
    except Exception as err:  # jsonargparse's ArgumentError: one message naming the key and the expected type
        message = " ".join(str(err).replace('Parser key "config.', f'key "{where}.').split())
        raise ConfigError(f"{where}: {message}") from None
    return {key: parsed["config"][key] for key in data}


def resolve_config(kind: str, given: Mapping[str, Any] | None, where: str = "model.config") -> Any:
    """The config of `kind` from user data: `preset` (tiny / small / medium) first, then the given fields.

    Where no preset is named the dataclass defaults are the base. Returns a new dataclass; nothing is
    copied onto an existing one.
    """
    _, config_cls = model_classes(kind)
    data = dict(given or {})
    preset = data.pop(PRESET_KEY, None)
    try:
        base = config_cls.preset(str(preset)) if preset is not None else config_cls()
    except ValueError as err:
        raise ConfigError(f"{where}.{PRESET_KEY}: {err}") from None
    return replace(base, **_checked_fields(config_cls, data, where))


def config_from_file(kind: str, data: Mapping[str, Any], source: str) -> Any:
    """The config stored in a model file: every key must be a field (old files may lack new ones)."""
    _, config_cls = model_classes(kind)
    return config_cls(**_checked_fields(config_cls, data, f"{source}: config"))


def build_model(kind: str, config: Any, schema: StoreSchema, normalization: Normalization) -> ModelBase[Any]:
    """The world model of `kind` for a store's schema and normalization."""
    model_cls, config_cls = model_classes(kind)
    if not isinstance(config, config_cls):
        raise ConfigError(f"model kind {kind!r} takes a {config_cls.__name__}; got {type(config).__name__}")
    return model_cls(config, schema, normalization)


def config_fields_help() -> str:
    """Every config field of every kind, one line each: key, docstring, type and default (for --help)."""
    import docstring_parser

    lines = []
    for kind, (_, config_cls) in MODEL_KINDS.items():
        docs = {p.arg_name: " ".join((p.description or "").split())
                for p in docstring_parser.parse_from_object(config_cls).params}
        lines.append(f"model.kind {kind} ({config_cls.__name__}); {PRESET_KEY}: tiny | small | medium:")
        for f in fields(config_cls):
            default = f.default if f.default_factory is MISSING else f.default_factory()
            kind_of = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            lines.append(f"  --model.config.{f.name}  {docs.get(f.name, '')} (type: {kind_of}, default: {default})")
    return "\n".join(lines)
