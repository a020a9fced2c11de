"""What people may see of free text and callback targets: URLs as scheme, host and path shape, no secrets."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

URL_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,15}://[^\s'\"<>()\[\]{}]+")
# user:password@tcp(host:port) of Go DSNs, and user:password@ left in any other text
USERINFO_RE = re.compile(r"(?<![\w/])([\w.%-]{1,64}):[^\s@/]{1,256}@(?=[\w.\[(-])")
HEADER_RE = re.compile(r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key|x-auth-token)(\s*:\s*)[^\r\n,;]+")
BEARER_RE = re.compile(r"(?i)\b(bearer|basic|token|digest)(\s+)[A-Za-z0-9._~+/=-]{6,}")
SECRET_WORDS = (
    r"password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|"
    r"signature|sig|auth|credentials?|session[_-]?id|client[_-]?secret"
)
PAIR_RE = re.compile(rf"(?i)(?<![\w-])([\w-]*(?:{SECRET_WORDS}))(\s*[=:]\s*|\"\s*:\s*\")([^\s&,;\"'}}]+)")
SHOWN_SEGMENT_RE = re.compile(r"^(?:[a-z]{1,20}(?:[._-][a-z]{1,20}){0,3}|v\d{1,2})$")  # lowercase words, versions
MASK = "***"


def url_shape(url: str) -> str:
    """A URL as people may see it: scheme, host, port and the shape of its path.

    User names, passwords, query strings and fragments are dropped; a path segment that is not a
    plain lowercase word (``hook``, ``user-events``; or a version like ``v2``) becomes ``*``, since
    tokens often live in webhook paths.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{url.split(':', 1)[0][:16]}://{MASK}"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}{port}{path_shape(parts.path)}{'?' + MASK if parts.query else ''}"


def path_shape(path: str) -> str:
    """A URL path (an endpoint) with every segment that is not a plain word replaced by ``*``; no query."""
    path, query, _ = path.partition("?")
    shape = "/".join(s if not s or SHOWN_SEGMENT_RE.match(s) else "*" for s in path.split("#")[0].split("/"))
    return shape + ("?" + MASK if query else "")


def redact(text: str | None) -> str | None:
    """Free text (an error, a note, an answer excerpt) without URLs' secrets, credentials or tokens."""
    if text is None:
        return None
    text = URL_RE.sub(lambda m: url_shape(m.group(0)), text)
    text = USERINFO_RE.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    text = HEADER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = BEARER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return PAIR_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
