"""The one exception type that means "the user's input is wrong" (reported in one line, exit code 2), and the
whole-number check many options share."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2, never a traceback."""


def check_whole(value: Any, option: str, minimum: int | None = None, what: str = "", hint: str = "") -> None:
    """A whole-number option (at least ``minimum``), else one line naming it (``what`` after "number", ``hint``
    at the end)."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise UserError(f"{option}={value!r}: must be a whole number{what}{bound}{hint}")
