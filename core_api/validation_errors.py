"""How a validation error reads to a user: one line per problem, the field as they wrote it, what
was wrong, no pydantic URLs or class names. Every command, the admin route and strategy
construction print errors through here."""
from __future__ import annotations

from pydantic import ValidationError


def format_validation_error(e: ValidationError) -> str:
    """One line per problem, each starting with the dotted field path."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")  # pydantic's wrapper of a validator's own words
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def error_text(exc: Exception) -> str:
    """What a command prints for a bad input: validation errors one plain line per problem."""
    return format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
