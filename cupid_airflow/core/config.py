"""Load and validate cupid config files (the original JSON format, comments allowed, or YAML)."""

from __future__ import annotations

import difflib
import hashlib
import re
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cupid_airflow.core.config_models import (
    CONFIG_SUFFIXES,
    RESERVED_KEYS,
    STEM_RE,
    CallbackNotification,
    CupidConfig,
    CupidConfigError,
    CupidConfigWarning,
    Destination,
    NotifierSpec,
    Reconcile,
    Source,
    StateConnection,
    Webhook,
    _Connection,
    check_headers,
    check_http_url,
)
from cupid_airflow.core.redact import is_secret_name

_NEAR_RE = re.compile(r"near (\d+)")
_CODEPOINT_RE = re.compile(r"U\+([0-9A-Fa-f]{4,6})")

__all__ = [
    "CONFIG_SUFFIXES",
    "STEM_RE",
    "CallbackNotification",
    "CupidConfig",
    "CupidConfigError",
    "CupidConfigWarning",
    "Destination",
    "NotifierSpec",
    "Reconcile",
    "Source",
    "StateConnection",
    "Webhook",
    "_Connection",
    "check_headers",
    "check_http_url",
    "config_name",
    "find_config_files",
    "load_config",
    "parse_json5",
    "read_config_data",
]


def config_name(path: str | Path) -> str:
    """The config's name: the file stem, as used in DAG ids (``user.json`` -> ``user``)."""
    return Path(path).stem


def read_config_data(path: str | Path) -> dict[str, Any]:
    """Read a config file's raw mapping (no validation)."""
    return _parse(Path(path), Path(path).read_bytes())


def parse_json5(text: str) -> Any:
    """JSON with comments, trailing commas and the rest of JSON5 (pyjson5); strict JSON is a subset.

    :raises ValueError: naming the line and column (never echoing the text, which may hold secrets).
    """
    import pyjson5

    try:
        return pyjson5.decode(text)
    except pyjson5.Json5Exception as err:
        message = _CODEPOINT_RE.sub(lambda m: repr(chr(int(m.group(1), 16))), str(err.message))
        message = re.sub(r"b'([^']*)'", r"\1", message.replace("b'comma'", "','")).replace("JSON5Value", "a value")
        near = _NEAR_RE.search(message)
        if near:
            index = max(0, int(near.group(1)) - 1)
            line = text.count("\n", 0, index) + 1
            column = index - (text.rfind("\n", 0, index) + 1) + 1
            message = _NEAR_RE.sub(f"at line {line}, column {column}", message)
        raise ValueError(message) from None


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CupidConfigError(path, [f"not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"]) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise CupidConfigError(path, [f"not valid YAML: {err}"]) from None
    else:
        try:
            data = parse_json5(text.removeprefix("\ufeff"))
        except ValueError as err:
            raise CupidConfigError(path, [f"not valid JSON (comments allowed): {err}"]) from None
    if not isinstance(data, dict):
        raise CupidConfigError(path, [f"the top level must be an object, not {type(data).__name__}"])
    return data


def load_config(path: str | Path) -> CupidConfig:
    """Load and validate one config file; raises :class:`CupidConfigError` naming every problem."""
    path = Path(path)
    name = config_name(path)
    if not STEM_RE.match(name):
        raise CupidConfigError(path, [f"file name {name!r} cannot name a DAG (letters, digits, _ . - only)"])
    raw = path.read_bytes()
    data = _parse(path, raw)
    for reserved in RESERVED_KEYS:
        if reserved in data:
            raise CupidConfigError(path, [f"{reserved}: unknown key (the config's name is its file name)"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = CupidConfig.model_validate(
                {**data, "name": name, "path": str(path), "sha256": hashlib.sha256(raw).hexdigest()}
            )
        except ValidationError as err:
            raise CupidConfigError(path, [_describe(e, data) for e in err.errors()]) from None
    for warning in caught:
        warnings.warn(f"{path}: {warning.message}", CupidConfigWarning, stacklevel=2)
    if config.src.pushbear_send_key:
        warnings.warn(
            f"{path}: src.pushbearSendKey is ignored: the PushBear service has shut down; "
            "configure alerts in the 'notify' section (webhooks or Airflow notifiers) instead",
            CupidConfigWarning,
            stacklevel=2,
        )
    return config


def find_config_files(folder: str | Path) -> list[Path]:
    """Every config file directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CONFIG_SUFFIXES)


def _path_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _value_at(data: Any, loc: tuple[int | str, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _describe(error: Any, data: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = _path_text(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _value_at(data, loc[:-1])
        model = _model_at(loc[:-1])
        accepted = sorted(
            f.alias or n for n, f in model.model_fields.items() if n not in RESERVED_KEYS or model is not CupidConfig
        )
        close = difflib.get_close_matches(str(loc[-1]), accepted, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        del parent
        return f"{path}: unknown key{hint}; accepted keys here: {', '.join(accepted)}"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if kind.startswith(("int_", "float_", "bool_", "string_", "dict_", "list_", "greater", "less", "too_")):
        hidden = any(str(p).lower() in ("dsn", "url", "headers", "kwargs") or is_secret_name(str(p)) for p in loc)
        shown = "***" if hidden else repr(value)
        return f"{path}: {shown} is not accepted: {message}"
    return f"{path}: {message}"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = CupidConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            break
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
    return model
