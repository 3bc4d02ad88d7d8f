"""User hooks named as `module:function` (policies, reward and termination functions).

They run because the user names them on a command line or in a config (docs: security section).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from data_pipeline.errors import InputError


def import_function(spec: str) -> Callable[..., Any]:
    """Import `package.module:function`; a clear error if either part is missing."""
    if ":" not in spec:
        raise InputError(f"{spec!r}: expected 'module:function'")
    module_name, func_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"{spec!r}: cannot import module {module_name!r} ({err})") from err
    try:
        func = getattr(module, func_name)
    except AttributeError:
        raise InputError(f"{spec!r}: module {module_name!r} has no attribute {func_name!r}") from None
    if not callable(func):
        raise InputError(f"{spec!r}: {func_name!r} in {module_name!r} is not callable")
    return func
