"""Keep secrets out of text: URLs reduced to their shape, known secret values and secret-looking pairs masked.

What any log line, error, XCom value, store column, alert or page may show of a URL, an error or an
answer goes through :func:`redact` (or :func:`url_shape` for a URL alone).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, overload
from urllib.parse import quote, quote_plus, unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable

MASK = "***"
# a path segment that reads as a word ("cupid", "open-apis", "Callback", "API", "v2") is kept; ids and
# tokens (digits, mixed case, long) are not
_WORD_SEGMENT = re.compile(r"^(?:[A-Za-z][a-z_.-]{0,19}|[A-Z]{1,8}|v\d{1,2})$")
_URL_IN_TEXT = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]+""")
_SHORTEST_SECRET = 4  # masking shorter values would mangle ordinary words
# user:password@tcp(host:port) of Go DSNs, and user:password@ left in any other text
_USERINFO = re.compile(r"(?<![\w/])([\w.%-]{1,64}):[^\s@/]{1,256}@(?=[\w.\[(-])")
_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key|x-auth-token)(\s*:\s*)[^\r\n,;]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token|digest)(\s+)[A-Za-z0-9._~+/=-]{6,}")
_SECRET_WORDS = (
    r"password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|"
    r"signature|sig|auth|credentials?|session[_-]?id|client[_-]?secret"
)
_PAIR = re.compile(rf"(?i)(?<![\w-])([\w-]*(?:{_SECRET_WORDS}))(\s*[=:]\s*|\"\s*:\s*\")([^\s&,;\"'}}]+)")
_TOKEN_SEGMENT = 8  # path segments this long that are not words are taken for tokens


def url_shape(url: str) -> str:
    """A URL as scheme, host, port and path shape only: no credentials, query or fragment, and every
    path segment that is not a plain word (a token, an id) replaced by ``***``.

    ``https://hooks.slack.com/services/T0/B0/XyZ`` -> ``https://hooks.slack.com/services/***/***/***``;
    ``http://app:8080/cupid/callback?token=x`` -> ``http://app:8080/cupid/callback?***``.
    """
    text = url.strip()
    if "://" not in text:
        text = "//" + text  # schemeless, as the original cupid's sample: still a host first
    try:
        parts = urlsplit(text)
    except ValueError:  # an unbalanced [ ]: nothing in it can be trusted to be safe
        return f"{text.partition('://')[0]}://{MASK}" if "://" in url else MASK
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # not a number from 0 to 65535: left out
        port = None
    if ":" in host:
        host = f"[{host}]"
    where = f"{host}:{port}" if port is not None else host
    segments = [s if not s or _WORD_SEGMENT.match(s) else MASK for s in parts.path.split("/")]
    shape = f"{parts.scheme}://{where}" if parts.scheme else where
    shape += "/".join(segments)
    if parts.query or parts.fragment:
        shape += "?" + MASK
    return shape


def url_secrets(url: str) -> list[str]:
    """Every part of a URL that may be a secret: its password, query and query values, the path segments
    that look like tokens (8 characters or more that :func:`url_shape` hides) and then the whole URL, in
    the forms they may appear in text; nothing for a URL without any of them."""
    text = url if "://" in url else "//" + url
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return [url]  # unparsable: all of it
    found = [password] if password else []
    if parts.query:
        found.append(parts.query)
        found += [pair.partition("=")[2] for pair in parts.query.split("&") if pair.partition("=")[2]]
    found += [s for s in parts.path.split("/") if len(s) >= _TOKEN_SEGMENT and not _WORD_SEGMENT.match(s)]
    return _with_encodings([*found, url]) if found else []


def path_shape(path: str) -> str:
    """An endpoint (a URL's path) with every segment that is not a plain word replaced by ``***``; no query."""
    path, query, _ = path.partition("?")
    shape = "/".join(s if not s or _WORD_SEGMENT.match(s) else MASK for s in path.split("#")[0].split("/"))
    return shape + ("?" + MASK if query else "")


@overload
def redact(text: str, secrets: Iterable[str | None] = ()) -> str: ...


@overload
def redact(text: None, secrets: Iterable[str | None] = ()) -> None: ...


def redact(text: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """``text`` with every given secret replaced by ``***``, every URL reduced to :func:`url_shape`, and
    whatever looks like a credential masked: ``user:password@``, Authorization and cookie headers,
    bearer tokens, ``password=``/``"api_key": ...`` pairs. None stays None."""
    if text is None:
        return None
    for secret in sorted(_with_encodings(s for s in secrets if s), key=len, reverse=True):
        if len(secret) >= _SHORTEST_SECRET:
            text = text.replace(secret, MASK)
    text = _URL_IN_TEXT.sub(_shape_match, text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def _shape_match(match: re.Match[str]) -> str:
    url = match.group(0)
    stripped = url.rstrip(".,;:)]}")  # sentence punctuation after a URL is not part of it
    return url_shape(stripped) + url[len(stripped) :]


def _with_encodings(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        for form in (value, unquote(value), quote(value, safe=""), quote_plus(value)):
            seen.setdefault(form, None)
    return list(seen)


_SECRET_NAME_PARTS = ("password", "passwd", "secret", "token", "auth", "cookie", "key", "sign", "credential", "session")


def is_secret_name(name: str) -> bool:
    """Whether a header, extra or config key of this name likely holds a secret (``Authorization``,
    ``X-Api-Key``, ``access_token``...)."""
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_NAME_PARTS)
