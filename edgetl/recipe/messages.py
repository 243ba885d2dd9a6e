"""Recipe validation errors as one line each: the field's path, what is wrong, a did-you-mean for a typo."""

from __future__ import annotations

import difflib
import reprlib
from typing import Any, get_args

from pydantic import BaseModel


def _section_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at `loc`'s parent, for did-you-mean suggestions."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
        if not hasattr(current, "model_fields"):  # `Section | None`: the section inside the Optional
            current = next((a for a in get_args(current) if hasattr(a, "model_fields")), current)
    return list(getattr(current, "model_fields", {}).keys())


# Echoed values are cut short: an error names the field and shows enough of the value to recognise it.
ECHO = reprlib.Repr()
ECHO.maxlevel, ECHO.maxdict, ECHO.maxlist, ECHO.maxtuple, ECHO.maxset = 3, 6, 6, 6, 6
ECHO.maxstring, ECHO.maxother, ECHO.maxlong = 120, 120, 40


def _format_error(err: dict[str, Any], schema: type[BaseModel]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = [f for f in _section_fields(schema, loc) if f != "source"]
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{where}: unknown key{suggestion} (valid keys here: {', '.join(valid)})"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and (not loc or isinstance(err["input"], dict)):
        return message if not loc else f"{where}: {message}"  # a check across fields: the message names them
    if err["type"] == "missing":
        message = "required but missing"
    return f"{where}: {message} (got {ECHO.repr(err['input'])})" if err["type"] != "missing" else f"{where}: {message}"


def problems(errors: list[dict[str, Any]], schema: type[BaseModel], prefix: str = "") -> str:
    """The first ten validation problems, each cut to 300 characters (a validator's message may echo its value)."""
    shown = [shorten(prefix + _format_error(e, schema), 300) for e in errors[:10]]
    return "; ".join(shown) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
