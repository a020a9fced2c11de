"""Translate PHP ``date()`` formats (``updateTimeFormate``) into MySQL ``DATE_FORMAT`` formats."""

from __future__ import annotations

# PHP format character -> MySQL DATE_FORMAT / STR_TO_DATE specifier.
PHP_TO_MYSQL = {
    "Y": "%Y",
    "y": "%y",
    "m": "%m",
    "n": "%c",
    "d": "%d",
    "j": "%e",
    "H": "%H",
    "G": "%k",
    "h": "%h",
    "g": "%l",
    "i": "%i",
    "s": "%s",
    "u": "%f",
    "A": "%p",
    "a": "%p",
    "M": "%b",
    "F": "%M",
    "D": "%a",
    "l": "%W",
}
EPOCH_FORMATS = {"U": 1, "Uv": 1000, "Uu": 1000000}
ACCEPTED = "PHP date() characters " + " ".join(PHP_TO_MYSQL) + ", '\\' escapes, or U / Uv / Uu for epoch integers"


class TimeFormatError(ValueError):
    """A PHP date format that cannot be translated."""


def php_to_mysql_format(php_format: str) -> str:
    """Translate e.g. ``Y-m-d H:i:s`` into ``%Y-%m-%d %H:%i:%s``.

    Epoch formats (``U`` seconds, ``Uv`` milliseconds, ``Uu`` microseconds)
    are valid and return an empty string: they are numbers, not text.
    """
    if php_format in EPOCH_FORMATS:
        return ""
    if not php_format:
        raise TimeFormatError(f"updateTimeFormate is empty (accepted: {ACCEPTED})")
    out: list[str] = []
    chars = iter(php_format)
    for ch in chars:
        if ch == "\\":
            literal = next(chars, "")
            out.append("%%" if literal == "%" else literal)
        elif ch in PHP_TO_MYSQL:
            out.append(PHP_TO_MYSQL[ch])
        elif ch.isalpha():
            raise TimeFormatError(
                f"updateTimeFormate {php_format!r}: PHP format character {ch!r} is not supported (accepted: {ACCEPTED})"
            )
        else:
            out.append("%%" if ch == "%" else ch)
    return "".join(out)


def epoch_scale(php_format: str | None) -> int | None:
    """Units per second for epoch formats, ``None`` for text formats."""
    return EPOCH_FORMATS.get(php_format or "")


TIME_ORDER = "YmdHisu"  # fixed-width fields, most significant first


def format_characters(php_format: str) -> list[str]:
    """The format characters of a PHP date format, in order, without ``\\``-escaped literals."""
    out: list[str] = []
    chars = iter(php_format)
    for ch in chars:
        if ch == "\\":
            next(chars, "")
        elif ch.isalpha():
            out.append(ch)
    return out


def sorts_as_text(php_format: str) -> bool:
    """True when text written in this format sorts like the time it names (``Y-m-d H:i:s``, ``Y-m-d\\TH:i:s``)."""
    fields = format_characters(php_format)
    return len(fields) >= 3 and fields == list(TIME_ORDER[: len(fields)])


def digits_format(php_format: str) -> bool:
    """True when the format writes only digits in time order, so an integer column can hold it (``YmdHis``)."""
    return php_format.isalpha() and len(php_format) >= 3 and list(php_format) == list("YmdHis"[: len(php_format)])
