"""What a cupid config file holds: its sections as pydantic models, each value checked as it is read."""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from cupid_airflow.core.dsn import DsnError, mask_dsn, parse_dsn
from cupid_airflow.core.redact import is_secret_name, url_secrets, url_shape
from cupid_airflow.core.sql import IDENTIFIER_RULE, TABLE_RULE, ConnectionParams, is_identifier, is_table_name
from cupid_airflow.core.timeformat import TimeFormatError, php_to_mysql_format

if TYPE_CHECKING:
    from pathlib import Path

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
STEM_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
OFFSET_RE = re.compile(r"^[+-](\d{1,2}):(\d{2})$")
ZONE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
RESERVED_KEYS = ("name", "path", "sha256")


class CupidConfigWarning(UserWarning):
    """A config value that is accepted but worth the user's attention."""


class CupidConfigError(ValueError):
    """A config file that cannot be used; names the file, the key path, the value and what is accepted."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{self.path}: " + "; ".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=False
    )


def _check_identifier(value: str) -> str:
    if not is_identifier(value):
        raise ValueError(f"{value!r} is not a valid column name (accepted: {IDENTIFIER_RULE})")
    return value


def _check_table(value: str) -> str:
    if not is_table_name(value):
        raise ValueError(f"{value!r} is not a valid table name (accepted: {TABLE_RULE})")
    return value


def check_headers(headers: dict[str, str], where: str = "headers") -> dict[str, str]:
    """Refuse header names that are not HTTP tokens and values that would split the request (CR, LF, NUL)."""
    for name, value in headers.items():
        if not HEADER_NAME_RE.match(name):
            raise ValueError(f"{where}: {name!r} is not a valid header name (letters, digits and !#$%&'*+.^_`|~-)")
        if any(ch in str(value) for ch in "\r\n\0"):
            raise ValueError(
                f"{where}.{name}: the value contains a line break or NUL, which would split the request; "
                "a header value must be one line"
            )
    return headers


def check_http_url(value: str, what: str) -> str:
    """An ``http(s)://host[:port]/...`` URL; errors show the URL's shape only (tokens often live in it)."""
    from urllib.parse import urlsplit

    scheme = value.partition("://")[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{what} {url_shape(value)!r}: scheme {scheme!r} is not accepted (accepted: http, https)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{what} {url_shape(value)!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname or any(ch.isspace() for ch in value) or port == 0:
        raise ValueError(f"{what} {url_shape(value)!r} is not a valid URL (expected e.g. http://host:port/path)")
    return value


class _Connection(_Model):
    """Where a database is: an Airflow connection id, or a Go or PDO DSN."""

    conn_id: str | None = None
    dsn: str | None = Field(default=None, repr=False)
    user: str | None = None
    password: str | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> _Connection:
        if self.conn_id and self.dsn:
            raise ValueError("give either connId or dsn, not both")
        if not self.conn_id and not self.dsn:
            raise ValueError("a connection is needed: connId (an Airflow connection id) or dsn")
        if self.dsn:
            try:
                parse_dsn(self.dsn, self.user, self.password)
            except DsnError as err:
                raise ValueError(str(err)) from None
        elif self.user is not None or self.password is not None:
            raise ValueError("'user' and 'password' go only with a PDO dsn; an Airflow connection has its own")
        return self

    def connection_params(self) -> ConnectionParams:
        """The parsed DSN; only for ``dsn`` connections (``conn_id`` ones are resolved by Airflow)."""
        if not self.dsn:
            raise ValueError("this connection is an Airflow connection id, not a DSN")
        return parse_dsn(self.dsn, self.user, self.password)

    def describe(self) -> str:
        """A password-free description for logs, docs and errors."""
        return f"connection {self.conn_id!r}" if self.conn_id else f"dsn {mask_dsn(self.dsn or '')!r}"

    def location(self) -> str:
        """Where the database is, without credentials: an Airflow connection id, or host, port and database."""
        if self.conn_id:
            return f"conn:{self.conn_id}"
        params = self.connection_params()
        return f"dsn:{params.unix_socket or f'{params.host}:{params.port}'}/{params.database or ''}"


class StateConnection(_Connection):
    """Where the delivery store lives (default: the source connection)."""


class Source(_Connection):
    """The watched source table (``src``)."""

    table: str
    by_column: str
    id_column: str = "id"
    insert: bool = True
    insert_interval_millisecond: int = Field(default=2000, ge=100)
    update: bool = False
    update_column: str | None = None
    update_interval_millisecond: int = Field(default=2000, ge=100)
    update_scan_second: int = Field(default=5, ge=0)
    update_time_formate: str | None = Field(
        default=None,
        validation_alias=AliasChoices("updateTimeFormate", "updateTimeFormat", "update_time_formate"),
    )
    update_time_zone: str | None = None
    late_commit_second: int = Field(default=10, ge=0)
    late_commit_max_gaps: int = Field(default=100000, ge=1)
    late_commit_max_rows: int | None = Field(default=None, ge=0)  # deprecated: ignored with a warning
    batch_size: int = Field(default=5000, ge=1, le=100000)
    max_rows_per_run: int = Field(default=500000, ge=1)
    max_seconds_per_run: float = Field(default=20.0, gt=0)
    lookup_connections: int = Field(default=8, ge=1, le=32)
    cache_file_path: str | None = None
    pushbear_send_key: str | None = Field(default=None, repr=False)

    _table = field_validator("table")(_check_table)
    _columns = field_validator("by_column", "id_column", "update_column")(
        lambda v: None if v is None else _check_identifier(v)
    )

    @field_validator("update_time_formate")
    @classmethod
    def _known_time_format(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                php_to_mysql_format(value)
            except TimeFormatError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("update_time_zone")
    @classmethod
    def _time_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        offset = OFFSET_RE.match(value)
        if offset and int(offset.group(1)) <= 14 and int(offset.group(2)) < 60:
            return value
        if not offset and ZONE_NAME_RE.match(value):
            return value
        raise ValueError(
            f"{value!r} is not a time zone (accepted: an offset such as '+08:00' or '-05:30', SYSTEM, or a name "
            "the source server knows such as 'UTC' or 'Asia/Shanghai')"
        )

    @field_validator("late_commit_max_rows")
    @classmethod
    def _late_commit_max_rows(cls, value: int | None) -> int | None:
        if value is not None:
            warnings.warn(
                "src.lateCommitMaxRows is ignored: late commits are tracked as id gaps below the insert cursor, "
                "whatever the id spacing; src.lateCommitMaxGaps caps how many gaps are remembered",
                CupidConfigWarning,
                stacklevel=2,
            )
        return value

    @model_validator(mode="after")
    def _update_column(self) -> Source:
        if self.update and not self.update_column:
            raise ValueError("update is true, so updateColumn is required (an indexed last-modified column)")
        return self


class CallbackNotification(_Model):
    """Where a destination's mismatches are POSTed."""

    url: str | None = Field(default=None, repr=False)
    http_conn_id: str | None = None
    endpoint: str = ""
    timeout_second: float = Field(default=5.0, gt=0, le=300)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    hmac_secret_variable: str | None = None
    hmac_secret_conn_id: str | None = None
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    recheck: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> CallbackNotification:
        if bool(self.url) == bool(self.http_conn_id):
            raise ValueError("give exactly one of url or httpConnId (an Airflow HTTP connection id)")
        if self.hmac_secret_variable and self.hmac_secret_conn_id:
            raise ValueError("give at most one of hmacSecretVariable and hmacSecretConnId")
        return self

    @field_validator("recheck")
    @classmethod
    def _recheck_is_always_on(cls, value: bool) -> bool:
        if not value:
            warnings.warn(
                "callbackNotification.recheck: false is ignored: every item is judged on the source and "
                "destination rows as they are just before it is sent, so a stale row is never sent",
                CupidConfigWarning,
                stacklevel=2,
            )
        return value

    _headers = field_validator("headers")(check_headers)

    @field_validator("url")
    @classmethod
    def _url_with_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("url is empty")
        scheme, sep, rest = value.partition("://")
        if not sep:
            warnings.warn(
                f"callback url {url_shape(value)!r} has no scheme; using http://",
                CupidConfigWarning,
                stacklevel=2,
            )
            scheme, rest = "http", value
        return check_http_url(f"{scheme.lower()}://{rest}", "url")


class Destination(_Connection):
    """One destination table (``des[]``)."""

    name: str | None = None
    table: str
    columns: dict[str, str] = Field(min_length=1)
    by_column: str
    callback_notification: CallbackNotification
    worker_number: int | None = Field(default=None, ge=1, le=256)

    _table = field_validator("table")(_check_table)
    _by_column = field_validator("by_column")(_check_identifier)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not is_identifier(value):
            raise ValueError(f"{value!r} is not a valid destination name (accepted: {IDENTIFIER_RULE})")
        return value

    @field_validator("columns")
    @classmethod
    def _mapping(cls, value: dict[str, str]) -> dict[str, str]:
        for source_column, destination_column in value.items():
            for column in (source_column, destination_column):
                _check_identifier(column)
        return value


class Webhook(_Model):
    """A chat or JSON webhook (Slack, WeCom, DingTalk, Feishu incoming webhooks, or any JSON endpoint).

    Either ``url`` (the whole webhook URL, token included) or ``connId``: an Airflow connection whose
    password is the webhook token (and whose host, when set, replaces the platform's), plus an optional
    ``endpoint``. ``signSecretVariable`` names the Variable holding a DingTalk robot's signing secret.
    """

    url: str | None = Field(default=None, repr=False)
    conn_id: str | None = None
    endpoint: str | None = None
    format: Literal["text", "slack", "wecom", "dingtalk", "feishu", "json"] = "json"
    timeout_second: float = Field(default=5.0, gt=0, le=60)
    sign_secret_variable: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value.strip(), "url")

    @model_validator(mode="after")
    def _one_target(self) -> Webhook:
        if bool(self.url) == bool(self.conn_id):
            raise ValueError("give exactly one of url or connId (an Airflow connection holding the token)")
        if self.endpoint is not None and not self.conn_id:
            raise ValueError("endpoint goes only with connId; a url is used as it is")
        if self.sign_secret_variable and self.format != "dingtalk":
            raise ValueError(f"signSecretVariable signs DingTalk messages; this webhook's format is {self.format!r}")
        return self

    def describe(self) -> str:
        """A token-free description for logs, errors and docs."""
        if self.conn_id:
            return f"{self.format} webhook (connection {self.conn_id!r})"
        return f"{self.format} webhook {url_shape(self.url or '')}"


class NotifierSpec(_Model):
    """Any Airflow notifier, by class path and keyword arguments; one call is bounded by ``timeoutSecond``."""

    class_path: str
    kwargs: dict[str, Any] = Field(default_factory=dict, repr=False)
    timeout_second: float = Field(default=10.0, gt=0, le=300)


class Notify(_Model):
    """Alerts: the replacement for PushBear."""

    webhooks: list[Webhook] = Field(default_factory=list)
    notifiers: list[NotifierSpec] = Field(default_factory=list)
    on_parked: bool = True
    on_dead: bool = True
    on_task_failure: bool = True


class FailurePool(_Model):
    """The 10-minute retry of parked deliveries."""

    schedule_second: int = Field(default=600, ge=5)
    max_attempts: int | None = Field(default=None, ge=1)
    max_age_second: int | None = Field(default=None, ge=60)
    batch_size: int = Field(default=10000, ge=1)


class Reconcile(_Model):
    """Full reconciliation by hash-bucket checksums (the ``cupid_<name>_reconcile`` DAG).

    Keys (camelCase in config files):

    - ``enabled``: generate the reconcile DAG (default false).
    - ``schedule``: a cron expression, a preset (``@daily``) or a number of seconds (60 or more).
    - ``detectDeletes``: record destination rows whose key is not in the source as type 3
      (deleted at source); otherwise they are only counted (``extraNotRecorded``).
    - ``chunkSize``: rows of each table's first chunk query; later chunks follow ``targetChunkSecond``.
    - ``minChunkSize`` / ``maxChunkSize``: bounds of the adaptive chunk size, in rows.
    - ``targetChunkSecond``: chunk sizes adapt so one chunk query takes about this long.
    - ``maxSecondsPerRun``: a run pauses (checkpoints) after this long; the next run resumes.
    - ``maxChunksPerRun``: a run pauses after this many chunk queries on either table (none: no limit).
    - ``maxThreadsRunning``: wait while a server's ``Threads_running`` is above this (none: no gate).
    - ``maxReplicaLagSecond``: wait while a server that is a replica lags more than this (none: no gate).
    - ``loadWaitSecond``: how long to wait before checking a busy server again.
    - ``bucketRows``: rows per hash bucket aimed at (the bucket count follows the larger table, 4096 to
      65536 buckets); fewer rows per bucket make the compare of sparse differences cheaper and the
      checkpoint bigger (12 bytes a bucket).
    - ``maxCompareRows``: rows of differing buckets one ordered read returns per table (the server sorts
      them); more are read in several ranges, one more scan of each table per range.
    - ``checkpointSecond``: write the checkpoint (table ``cupid_reconcile_checkpoint`` in the state
      database) at most this often, and only after progress.
    - ``maxCheckpointAgeSecond``: a verify that began longer ago than this is not resumed but started over
      (a verify is not a snapshot: changes in ranges it already read are seen by the next one); none: no bound.
    - ``keyColumns``: two or more *source* columns that match rows instead of ``src.byColumn`` /
      ``des[].byColumn`` (a composite key); every one must be mapped in each destination's ``columns``,
      which gives its destination name.
    """

    enabled: bool = False
    schedule: str | int = "@daily"
    detect_deletes: bool = False
    chunk_size: int = Field(default=20000, ge=10)
    min_chunk_size: int = Field(default=1000, ge=10)
    max_chunk_size: int = Field(default=1_000_000, ge=10)
    target_chunk_second: float = Field(default=0.5, gt=0)
    max_seconds_per_run: float = Field(default=1800.0, gt=0)
    max_chunks_per_run: int | None = Field(default=None, ge=1)
    max_threads_running: int | None = Field(default=None, ge=1)
    max_replica_lag_second: int | None = Field(default=None, ge=0)
    load_wait_second: float = Field(default=1.0, gt=0, le=600)
    bucket_rows: int = Field(default=32, ge=1, le=100000)
    max_compare_rows: int = Field(default=10_000_000, ge=1000)
    checkpoint_second: float = Field(default=10.0, gt=0)
    max_checkpoint_age_second: float | None = Field(default=7 * 86400.0, gt=0)
    key_columns: list[str] | None = Field(default=None, min_length=2)

    @field_validator("key_columns")
    @classmethod
    def _key_columns(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        seen: set[str] = set()
        for column in value:
            _check_identifier(column)
            if column.lower() in seen:
                raise ValueError(f"column {column!r} is listed twice")
            seen.add(column.lower())
        return value

    @model_validator(mode="after")
    def _chunk_bounds(self) -> Reconcile:
        if self.min_chunk_size > self.max_chunk_size:
            raise ValueError(f"minChunkSize {self.min_chunk_size} is above maxChunkSize {self.max_chunk_size}")
        return self

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | int) -> str | int:
        if isinstance(value, int):
            if value < 60:
                raise ValueError(f"{value} is not accepted: a reconcile schedule in seconds must be 60 or more")
            return value
        from croniter import croniter

        presets = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@once")
        if value not in presets and not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a cron expression (e.g. '0 3 * * *'), a preset ({', '.join(presets)}) "
                "or a number of seconds"
            )
        return value


class CupidConfig(_Model):
    """One cupid config file: one source table, one or more destinations."""

    name: str
    path: str = ""
    sha256: str = ""
    worker_number: int = Field(default=3, ge=1, le=256)
    log_dir: str | None = None
    failure_job_retry_second: int = Field(default=10, ge=1)
    retries: int = Field(default=3, ge=0, le=20)
    src: Source
    des: list[Destination] = Field(min_length=1)
    state: StateConnection | None = None
    failure_pool: FailurePool = Field(default_factory=FailurePool)
    notify: Notify = Field(default_factory=Notify)
    reconcile: Reconcile = Field(default_factory=Reconcile)
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_destination_names(self) -> CupidConfig:
        seen: set[str] = set()
        for name in self.destination_names:
            if name in seen:
                raise ValueError(f"two destinations are named {name!r}; destination names must be unique")
            seen.add(name)
        return self

    @model_validator(mode="after")
    def _compare_something(self) -> CupidConfig:
        """Watching nothing is a reconcile-only config (a full verify on the reconcile schedule), or a mistake."""
        if not self.src.insert and not self.src.update and not self.reconcile.enabled:
            raise ValueError(
                "src.insert and src.update are both false and reconcile is not enabled: nothing would ever be "
                "compared (enable reconcile for a config that only verifies whole tables)"
            )
        return self

    @model_validator(mode="after")
    def _reconcile_key_columns_mapped(self) -> CupidConfig:
        """Every ``reconcile.keyColumns`` column is mapped in each destination's ``columns``."""
        for n, (name, destination) in enumerate(zip(self.destination_names, self.des, strict=True)):
            mapped = {c.lower() for c in destination.columns}
            absent = [c for c in self.reconcile.key_columns or () if c.lower() not in mapped]
            if absent:
                raise ValueError(
                    f"reconcile.keyColumns: {', '.join(repr(c) for c in absent)} not mapped in des[{n}].columns "
                    f"(destination {name}); every key column must be a source column of each destination's "
                    "columns mapping, which gives its destination name"
                )
        return self

    @property
    def destination_names(self) -> list[str]:
        """Each destination's name as written, ``des<i>`` by position when unnamed.

        For docs and messages only: an unnamed destination's identity (items, cursors) is the
        label the state database gave its fingerprint (:attr:`destination_keys`), which may differ.
        """
        return [d.name or f"des{i}" for i, d in enumerate(self.des)]

    @property
    def destination_keys(self) -> list[tuple[str | None, str]]:
        """(``des[].name`` or None, fingerprint) of each destination, for its stable identity.

        The fingerprint names where an unnamed destination is (connection, table, key column); two
        destinations at the same place are told apart by their order among themselves.
        """
        keys: list[tuple[str | None, str]] = []
        seen: dict[str, int] = {}
        for des in self.des:
            place = f"{des.location()}|{des.table}|{des.by_column}"
            occurrence = seen[place] = seen.get(place, -1) + 1
            fingerprint = hashlib.sha1(f"{place}|{occurrence}".encode(), usedforsecurity=False).hexdigest()
            keys.append((des.name, fingerprint))
        return keys

    @property
    def sync_dag_id(self) -> str:
        return f"cupid_{self.name}_sync"

    @property
    def failure_pool_dag_id(self) -> str:
        return f"cupid_{self.name}_failure_pool"

    @property
    def reconcile_dag_id(self) -> str:
        return f"cupid_{self.name}_reconcile"

    @property
    def watches(self) -> bool:
        """Whether the source is watched for new or updated rows (a sync DAG); False for a reconcile-only config."""
        return self.src.insert or self.src.update

    @property
    def schedule(self) -> timedelta:
        """How often the sync DAG runs: the shorter of the enabled watch intervals."""
        intervals = []
        if self.src.insert:
            intervals.append(self.src.insert_interval_millisecond)
        if self.src.update:
            intervals.append(self.src.update_interval_millisecond)
        if not intervals:
            raise ValueError(f"config {self.name!r} watches nothing: it has no sync DAG")
        return timedelta(milliseconds=min(intervals))

    @property
    def state_connection(self) -> _Connection:
        return self.state or self.src

    def secrets(self) -> list[str]:
        """Every secret written in this config: DSN passwords, callback URL queries and tokens, secret
        headers, webhook URLs and secret notifier arguments (for the log masker and :func:`redact`)."""
        found: list[str] = []
        for connection in (self.src, *self.des, *([self.state] if self.state else [])):
            if connection.password:
                found.append(connection.password)
            if connection.dsn:
                found.append(connection.dsn)
                with contextlib.suppress(DsnError):
                    found.append(connection.connection_params().password)
        for des in self.des:
            callback = des.callback_notification
            if callback.url:
                found += url_secrets(callback.url)
            found += [value for name, value in callback.headers.items() if is_secret_name(name)]
        for webhook in self.notify.webhooks:
            if webhook.url:
                found += url_secrets(webhook.url)
        for spec in self.notify.notifiers:
            found += [str(v) for k, v in spec.kwargs.items() if is_secret_name(k) and isinstance(v, str | int)]
            found += [url for url in spec.kwargs.values() if isinstance(url, str) and "://" in url]
        return [s for s in dict.fromkeys(found) if s]
