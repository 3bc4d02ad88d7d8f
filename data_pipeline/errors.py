"""User errors and how command lines report them (DESIGN, Trust: "User errors are one message (file,
field, row, expected) with no traceback").

Every error that a user's input causes (a malformed spec, bad data, a locked or damaged store, a wrong
path, a refused overwrite) is a `UserError`. Command lines run through `run_cli`, which prints such an
error as one line on stderr and exits 1; argparse exits 2 for bad usage. Anything else is a bug in
twinworld and keeps its traceback. `TWINWORLD_DEBUG=1` shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """An error in the user's input or environment: the message names the file, field, row and what was
    expected, and is all the user needs to see."""


# Built-in errors that, raised by twinworld's own checks, always concern a path the user named.
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def debug() -> bool:
    """Whether TWINWORLD_DEBUG asks for tracebacks of user errors."""
    return os.environ.get("TWINWORLD_DEBUG", "").strip() not in ("", "0", "false", "no")


def run_cli(main: Callable[[], int | None], prog: str) -> int:
    """Run a command line's `main`: user errors become one line on stderr and exit code 1; Ctrl-C is 130."""
    try:
        return int(main() or 0)
    except (UserError, *_USER_OS_ERRORS) as err:
        if debug():
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    text = str(err) if not isinstance(err, OSError) or not err.filename else f"{err.filename}: {err.strerror}"
    return " ".join(text.split()) or type(err).__name__


class InputError(UserError, ValueError):
    """An option, a config value, a hook or input data that twinworld cannot use (a ValueError, so callers
    that catch ValueError keep working); the message says what was given and what was expected."""
