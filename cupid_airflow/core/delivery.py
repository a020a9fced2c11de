"""Deliver callback bodies over HTTP: bounded concurrency, rate limit, circuit breaker, timeouts."""

from __future__ import annotations

import asyncio
import errno
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import aiohttp

from cupid_airflow.core.payload import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, signature_header_value
from cupid_airflow.core.redact import is_secret_name, redact, url_secrets, url_shape

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

ANSWER_READ_CAP = 64 * 1024
EXCERPT_CHARS = 200
ERROR_MAX_CHARS = 1000
CIRCUIT_OPEN_PREFIX = "circuit open"
USER_AGENT = "cupid-airflow"
_OWN_HEADERS = {name.lower() for name in ("Content-Type", IDEMPOTENCY_HEADER, SIGNATURE_HEADER)}


@dataclass(frozen=True)
class CallbackTarget:
    """One application callback and how hard it may be called.

    :param url: an ``http://`` or ``https://`` URL; redirects are not followed unless ``allow_redirects``.
    :param headers: extra request headers; they cannot override ``Content-Type``,
        ``Idempotency-Key`` or the signature header.
    :param timeout_second: limit for one whole request, connecting included.
    :param concurrency: requests in flight at most (the original's ``workerNumber``).
    :param rate_limit_per_second: requests started per second at most (burst of one); None for no limit.
    :param hmac_secret: when set, each body is signed in ``X-Cupid-Signature: sha256=<hex>``.
    :param verify_ssl: verify the receiver's TLS certificate.
    :param ca_bundle: a CA file (PEM) to verify it with instead of the system's.
    :param client_cert: a client certificate for mutual TLS: (certificate file, key file or None when the
        certificate file holds the key too).
    :param proxy: an HTTP proxy URL (credentials may be in it) every request goes through.
    :param trust_env: also take proxies and ``.netrc`` credentials from the environment.
    :param allow_redirects: follow redirects (at most ``max_redirects``).
    :param breaker_threshold: consecutive failures after which this call sends nothing more.
    :param breaker_cooldown_second: how long the caller should leave the target alone after
        the breaker opened; :func:`deliver` itself never waits (the breaker stays open for
        the rest of the call).
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_second: float = 5.0
    concurrency: int = 3
    rate_limit_per_second: float | None = None
    hmac_secret: str | None = field(default=None, repr=False)
    verify_ssl: bool = True
    breaker_threshold: int = 20
    breaker_cooldown_second: float = 60.0
    ca_bundle: str | None = None
    client_cert: tuple[str, str | None] | None = None
    proxy: str | None = field(default=None, repr=False)
    trust_env: bool = False
    allow_redirects: bool = False
    max_redirects: int = 10

    @cached_property
    def secrets(self) -> list[str]:
        """What a receiver might echo back in an error answer, kept out of every recorded error."""
        return [
            *(value for name, value in self.headers.items() if is_secret_name(name)),
            *([self.hmac_secret] if self.hmac_secret else []),
            *url_secrets(self.url),
            *(url_secrets(self.proxy) if self.proxy else []),
        ]

    def __post_init__(self) -> None:
        if not self.url.lower().startswith(("http://", "https://")):
            raise ValueError(f"callback url {url_shape(self.url)!r} must start with http:// or https://")
        if self.timeout_second <= 0:
            raise ValueError(f"timeout_second must be > 0, got {self.timeout_second}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate_limit_per_second is not None and self.rate_limit_per_second <= 0:
            raise ValueError(f"rate_limit_per_second must be > 0 or None, got {self.rate_limit_per_second}")
        if self.breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be >= 1, got {self.breaker_threshold}")


@dataclass(frozen=True)
class Delivery:
    """One body to POST; ``item_id`` is the caller's handle (the delivery store's id)."""

    item_id: int
    idempotency_key: str
    body: bytes


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one delivery.

    :param ok: the receiver answered 2xx.
    :param http_status: the answer's status, None when there was no answer.
    :param error: a short message a person can act on; None when ``ok``.
    :param elapsed_second: time spent on the request (0 when it was not sent).
    :param retry_after_second: a 429 or 503 answer's ``Retry-After``, in seconds.
    :param sent: the request was started (False: not sent, e.g. the circuit was open).
    """

    item_id: int
    ok: bool
    http_status: int | None
    error: str | None
    elapsed_second: float
    retry_after_second: float | None = None
    sent: bool = True

    @property
    def counts_for_breaker(self) -> bool:
        """A failure that says the receiver is unwell (a 429 only asks us to slow down)."""
        return self.sent and not self.ok and self.http_status != 429


def deliver(
    target: CallbackTarget,
    deliveries: Iterable[Delivery],
    on_result: Callable[[DeliveryResult], None] | None = None,
) -> list[DeliveryResult]:
    """POST every delivery to the target and return one result per delivery, in input order.

    HTTP problems never raise: they are failed results. Once ``breaker_threshold``
    consecutive deliveries failed, the rest are not sent and fail with
    ``circuit open: N consecutive failures, not sent``.

    :param on_result: called with each result as it arrives, on the calling thread (inside
        the event loop this call runs); an exception it raises stops delivery (requests in
        flight are abandoned, nothing more is sent) and propagates.
    :raises RuntimeError: when called from inside a running event loop.
    """
    if _loop_is_running():
        raise RuntimeError("deliver() runs its own event loop: call it from synchronous code or a worker thread")
    items = list(deliveries)
    if not items:
        return []
    return asyncio.run(_Run(target, items, on_result).run())


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _RateLimiter:
    """A token bucket of depth one: starts are spaced ``1 / rate`` seconds apart."""

    def __init__(self, rate_per_second: float) -> None:
        self._interval = 1.0 / rate_per_second
        self._next_start = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


class _Run:
    """One call of :func:`deliver`: shared queue, breaker state and results."""

    def __init__(
        self,
        target: CallbackTarget,
        items: list[Delivery],
        on_result: Callable[[DeliveryResult], None] | None,
    ) -> None:
        self.target = target
        self.items = items
        self.on_result = on_result
        self.results: list[DeliveryResult | None] = [None] * len(items)
        self.next_index = 0
        self.consecutive_failures = 0
        self.breaker_opened_after: int | None = None
        self.rate_limiter = _RateLimiter(target.rate_limit_per_second) if target.rate_limit_per_second else None

    async def run(self) -> list[DeliveryResult]:
        async with open_session(self.target) as session:
            workers = [
                asyncio.create_task(self._worker(session)) for _ in range(min(self.target.concurrency, len(self.items)))
            ]
            done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
        return [result for result in self.results if result is not None]

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while self.next_index < len(self.items):
            index = self.next_index
            self.next_index += 1
            item = self.items[index]
            if self.breaker_opened_after is None and self.rate_limiter is not None:
                await self.rate_limiter.wait()
            if self.breaker_opened_after is not None:
                reason = f"{CIRCUIT_OPEN_PREFIX}: {self.breaker_opened_after} consecutive failures, not sent"
                result = not_sent(item, reason)
            else:
                result = await post(session, self.target, item)
                self._count(result)
            self.results[index] = result
            if self.on_result is not None:
                self.on_result(result)

    def _count(self, result: DeliveryResult) -> None:
        if result.ok:
            self.consecutive_failures = 0
            return
        if not result.counts_for_breaker:
            return
        self.consecutive_failures += 1
        if self.breaker_opened_after is None and self.consecutive_failures >= self.target.breaker_threshold:
            self.breaker_opened_after = self.consecutive_failures


def open_session(target: CallbackTarget) -> aiohttp.ClientSession:
    """An HTTP session for one target: ``concurrency`` connections at most, its TLS, proxy and timeout settings."""
    connector = aiohttp.TCPConnector(limit=target.concurrency, ssl=_ssl_setting(target))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=target.timeout_second),
        trust_env=target.trust_env,
    )


def not_sent(item: Delivery, reason: str) -> DeliveryResult:
    """The result of a delivery that was not attempted."""
    return DeliveryResult(item.item_id, False, None, reason, 0.0, sent=False)


def request_headers(target: CallbackTarget, item: Delivery) -> dict[str, str]:
    """The headers of one callback: the target's own, then ours (which it cannot override)."""
    headers = {"User-Agent": USER_AGENT}
    headers.update((name, value) for name, value in target.headers.items() if name.lower() not in _OWN_HEADERS)
    headers["Content-Type"] = "application/json"
    headers[IDEMPOTENCY_HEADER] = item.idempotency_key
    if target.hmac_secret is not None:
        headers[SIGNATURE_HEADER] = signature_header_value(item.body, target.hmac_secret)
    return headers


async def post(session: aiohttp.ClientSession, target: CallbackTarget, item: Delivery) -> DeliveryResult:
    """POST one body; HTTP problems are failed results, never exceptions, and never show a secret."""
    started = time.monotonic()
    status: int | None = None
    retry_after: float | None = None
    try:
        async with session.post(
            target.url,
            data=item.body,
            headers=request_headers(target, item),
            proxy=target.proxy,
            allow_redirects=target.allow_redirects,
            max_redirects=target.max_redirects,
        ) as response:
            status = response.status
            if 200 <= status < 300:
                error = None
            else:
                error = await _answer_error(response)
                if status in (429, 503):
                    retry_after = retry_after_second(response.headers.get("Retry-After"))
    except TimeoutError:
        error = f"timeout after {target.timeout_second} s"
    except (aiohttp.ClientError, OSError) as exc:
        error = _transport_error(exc)
    return DeliveryResult(
        item.item_id,
        ok=error is None,
        http_status=status,
        error=redact(error, target.secrets)[:ERROR_MAX_CHARS] if error else None,
        elapsed_second=time.monotonic() - started,
        retry_after_second=retry_after,
    )


def retry_after_second(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _ssl_setting(target: CallbackTarget) -> Any:
    """What aiohttp's ``ssl`` takes: False (no verification), True (the defaults) or a context."""
    if not target.verify_ssl and target.client_cert is None:
        return False
    if target.ca_bundle is None and target.client_cert is None:
        return True
    import ssl

    context = ssl.create_default_context(cafile=target.ca_bundle)
    if not target.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if target.client_cert is not None:
        context.load_cert_chain(*target.client_cert)
    return context


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < ANSWER_READ_CAP:
        chunk = await response.content.read(ANSWER_READ_CAP - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _excerpt(data: bytes) -> str:
    text = _one_line(data.decode("utf-8", errors="replace"))
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


async def _answer_error(response: aiohttp.ClientResponse) -> str:
    status = response.status
    excerpt = _excerpt(await _read_capped(response))
    if 300 <= status < 400:
        location = response.headers.get("Location")
        where = url_shape(location) if location else "(no Location header)"
        return f"redirect {status} to {where} (redirects are not followed; fix the callback url)"
    if excerpt:
        return f"HTTP {status}: {excerpt}"
    reason = f" {response.reason}" if response.reason else ""
    return f"HTTP {status}{reason} (empty body)"


def _transport_error(exc: BaseException) -> str:
    """A one-line reason that names hosts and ports but never a URL's query, credentials or path tokens."""
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot connect to the proxy {exc.host}:{exc.port}: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"the proxy refused the request: HTTP {exc.status} {_one_line(exc.message)}"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return f"more than the allowed redirects, the last to {url_shape(str(exc.request_info.real_url))}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate of {exc.host}:{exc.port} not accepted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {exc.host}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"connection refused: nothing listens on {exc.host}:{exc.port}"
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the receiver before a complete answer"
    if isinstance(exc, OSError) and exc.errno == errno.ECONNRESET:
        return "connection reset by the receiver before a complete answer"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP answer: {_one_line(exc.message)}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid callback url: {url_shape(str(exc.url))}"
    return f"{type(exc).__name__}: {redact(_one_line(str(exc)))}"
