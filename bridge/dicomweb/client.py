"""The DICOMweb client: QIDO-RS search, WADO-RS retrieve, probe; the one place httpx errors map.

The client is asynchronous (``httpx.AsyncClient``) so that in-flight requests can be
cancelled from outside: cancelling the task that awaits a response closes its connection,
which is how a DIMSE C-CANCEL reaches the server at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpcore
import httpx
from dicomweb_client.uri import URI, URISuffix
from pydicom import dcmread

from bridge.config import DicomwebConfig
from bridge.dicomweb import ratelimit, stow
from bridge.dicomweb.breaker import CircuitBreaker, Listener
from bridge.dicomweb.multipart import (
    MultipartDecoder,
    MultipartEncoder,
    Part,
    boundary_from_content_type,
)
from bridge.dicomweb.outcomes import classify, fetch_as_stored_instead, http_row
from bridge.dicomweb.rawget import RawGetter
from bridge.dicomweb.retry import RetryPolicy, parse_retry_after, retrying
from bridge.dicomweb.stow import parse_stow_response, part10_body
from bridge.errors import (
    DicomwebError,
    DicomwebHTTPError,
    DicomwebPagingLimit,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebTLSError,
    DicomwebUnavailable,
)
from bridge.models import InstanceRef, QidoPage, QidoQuery, QidoResource, StowResult
from bridge.profiles import GENERIC, Capabilities

LOGGER = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
# Any stored syntax: the server sends the instance as stored, without transcoding.
ANY_SYNTAX = "*"
# Bulk data is already compressed or large: gzip costs Orthanc 15x the time (measured).
_NO_GZIP = {"Accept-Encoding": "identity"}
# httpcore reads at most 64 KB per socket read, and anyio splits each 256 KB read of
# asyncio's transport into four, each costing an event-loop round: with 1 MB reads an
# instance of 0.5 MB takes two or three (measured: the event loop was most of the
# bridge's CPU per C-GET sub-operation). A class attribute of httpcore 1.0.
httpcore._async.http11.AsyncHTTP11Connection.READ_NUM_BYTES = 1024 * 1024
# Characters DICOM matching needs, left unescaped by the "dicom" query encoding: servers
# such as Orthanc 1.10 do not percent-decode query values (``DOE%5E*`` matches nothing).
_DICOM_SAFE = "^*?,"


def encode_query_value(value: str, policy: str) -> str:
    """Percent-encode one query key or value under the configured policy."""
    return quote(value, safe=_DICOM_SAFE if policy == "dicom" else "")


def build_qido_url(
    base_url: str,
    query: QidoQuery,
    *,
    offset: int = 0,
    limit: int | None = None,
    policy: str = "dicom",
) -> str:
    """The full QIDO-RS URL of one page of `query`; parameters in a deterministic order."""
    params: list[tuple[str, str]] = list(query.match)
    params += [("includefield", name) for name in query.includefield]
    if query.fuzzymatching:
        params.append(("fuzzymatching", "true"))
    if limit is not None:
        params.append(("limit", str(limit)))
    if offset:
        params.append(("offset", str(offset)))
    url = base_url.rstrip("/") + query.path()
    if not params:
        return url
    encoded = "&".join(
        f"{encode_query_value(k, policy)}={encode_query_value(v, policy)}" for k, v in params
    )
    return f"{url}?{encoded}"


@contextlib.contextmanager
def map_errors(url: str) -> Iterator[None]:
    """Turn httpx exceptions into the bridge's DicomwebError tree (see bridge.errors)."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        error: DicomwebError = DicomwebTimeout(f"timed out connecting to {_safe_url(url)}")
        error.never_sent = True
        raise error from exc
    except httpx.TimeoutException as exc:
        raise DicomwebTimeout(
            f"timed out talking to {_safe_url(url)}: {type(exc).__name__}"
        ) from exc
    except httpx.ConnectError as exc:
        if _tls_failure(exc) is not None:
            raise DicomwebTLSError(
                f"TLS with {_safe_url(url)} failed: {_tls_failure(exc)}"
            ) from exc
        error = DicomwebUnavailable(f"cannot connect to {_safe_url(url)}: {exc}")
        error.never_sent = True
        raise error from exc
    except httpx.UnsupportedProtocol as exc:
        error = DicomwebUnavailable(f"cannot connect to {_safe_url(url)}: {exc}")
        error.never_sent = True
        raise error from exc
    except httpx.RemoteProtocolError as exc:
        broken = DicomwebProtocolError(f"broken HTTP answer from {_safe_url(url)}: {exc}")
        broken.transient = True
        raise broken from exc
    except httpx.TransportError as exc:
        raise DicomwebUnavailable(f"connection to {_safe_url(url)} failed: {exc}") from exc
    except httpx.HTTPError as exc:
        raise DicomwebError(f"HTTP error talking to {_safe_url(url)}: {exc}") from exc


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS reason behind a connection failure, if that is what it was."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            detail = getattr(cause, "verify_message", "") or ""
            return ": ".join(str(x) for x in (cause.reason, detail) if x) or str(cause)
        cause = cause.__cause__ or cause.__context__
    return None


def _safe_url(url: str) -> str:
    """The URL without its query string: query values are patient data (PHI)."""
    return url.split("?", 1)[0]


def raise_for_status(response: httpx.Response) -> None:
    """Raise for anything but a 2xx: redirects are not followed (they would carry
    credentials to another host), so a 3xx is an error that asks for the final URL."""
    if 300 <= response.status_code < 400:
        location = _safe_url(response.headers.get("location", "?"))
        raise DicomwebHTTPError(
            response.status_code,
            f"redirect to {location}: set dicomweb.url to the final URL",
            _safe_url(str(response.url)),
        )
    if response.status_code >= 400:
        raise DicomwebHTTPError(
            response.status_code,
            response.reason_phrase,
            _safe_url(str(response.url)),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


def parse_qido_body(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """The DICOM JSON array of a QIDO-RS answer; DicomwebProtocolError when it is not one."""
    if not body.strip():
        return []
    try:
        data = json.loads(body)
    except ValueError:
        kind = content_type.split(";")[0] or "no content type"
        raise DicomwebProtocolError(f"QIDO-RS answer is not JSON ({kind})") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise DicomwebProtocolError("QIDO-RS answer is not a JSON array of DICOM objects")
    return data


def _more_hinted(response: httpx.Response) -> bool:
    # PS3.18 8.3.4.2: a server that truncates says so in a Warning header.
    warning = response.headers.get("warning", "").lower()
    return "additional results" in warning or "more results" in warning


# (backend, kind, outcome, seconds) of each HTTP exchange, for metrics.
Observer = Callable[[str, str, str, float], None]
T = TypeVar("T")


def outcome_of(error: DicomwebError) -> str:
    """The metrics outcome label of a failed exchange (an HTTP status, or what broke)."""
    return classify(error).label


_NO_RETRY = RetryPolicy(max_retries=0)


def is_last_page(page: QidoPage, page_size: int) -> bool:
    """Whether paging stops after `page`: it came back empty (or 204), or short without a
    Warning that more exist. A full page always asks for the next: servers that send no
    Warning header (Google) are paged to the end all the same."""
    return not page.results or (len(page.results) < page_size and not page.more_hinted)


# The attribute that identifies each row of a QIDO-RS resource, for de-duplication.
_ROW_UID = {
    QidoResource.STUDIES: "0020000D",
    QidoResource.SERIES: "0020000E",
    QidoResource.INSTANCES: "00080018",
}


def row_uid(result: dict[str, Any], resource: QidoResource) -> str | None:
    """The UID of one QIDO-RS result row (its resource's unique key), if it has one."""
    element = result.get(_ROW_UID[resource])
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]) if isinstance(values, list) and values else None


class Pager:
    """The pages of one QIDO-RS search, limit/offset to the end, each fetched by ``next``
    when the caller asks for it (so a C-FIND streams as pages arrive).

    Per server (its Capabilities): the page size is at most ``max_limit``; a row seen on
    an earlier page is dropped (servers that list newest first repeat rows when data
    arrives between pages); an offset past ``max_offset``, or rows past ``max_records``,
    raise DicomwebPagingLimit instead of ending silently.
    """

    def __init__(
        self,
        client: DicomwebClient,
        query: QidoQuery,
        page_size: int,
        capabilities: Capabilities = GENERIC,
    ) -> None:
        self.client = client
        self.query = query
        if capabilities.max_limit:
            page_size = min(page_size, capabilities.max_limit)
        self.page_size = page_size
        self.capabilities = capabilities
        self.offset = 0
        self.done = False
        self.seen: set[str] = set()

    async def next(self) -> QidoPage | None:
        """The next page, or None after the last (see ``is_last_page``)."""
        if self.done:
            return None
        caps = self.capabilities
        if self.offset and caps.max_offset and self.offset > caps.max_offset:
            raise DicomwebPagingLimit(
                f"server cannot page further (offset {caps.max_offset} max): narrow the query"
            )
        if self.offset and caps.max_records and self.offset >= caps.max_records:
            raise DicomwebPagingLimit(
                f"server cannot page further ({caps.max_records} records max): narrow the query"
            )
        limit = self.page_size
        if caps.max_records:
            limit = min(limit, caps.max_records - self.offset)
        page = await self.client.search(self.query, offset=self.offset, limit=limit)
        self.offset += len(page.results)
        self.done = is_last_page(page, limit)
        fresh = []
        for result in page.results:
            uid = row_uid(result, self.query.resource)
            if uid is not None:
                if uid in self.seen:
                    continue
                self.seen.add(uid)
            fresh.append(result)
        if len(fresh) == len(page.results):
            return page
        return QidoPage(results=fresh, more_hinted=page.more_hinted)


class DicomwebClient:
    """QIDO-RS / WADO-RS / STOW-RS against one DICOMweb base URL, over an injected client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        query_encoding: str,
        policy: RetryPolicy | None = None,
        backend: str = "default",
        observer: Observer | None = None,
        raw: RawGetter | None = None,
        breaker: CircuitBreaker | None = None,
        page_size: int = DicomwebConfig.page_size,
        capabilities: Capabilities = GENERIC,
    ) -> None:
        self.http = http
        # What the server can do (bridge/profiles.py): paging limits here.
        self.capabilities = capabilities
        # QIDO-RS limit of each page of search_pages.
        self.page_size = page_size
        # The lean GET for WADO-RS bulk data (bridge/dicomweb/rawget.py), when usable.
        self.raw = raw
        self.base_url = base_url.rstrip("/")
        self.query_encoding = query_encoding
        self.policy = policy or RetryPolicy()
        self.backend = backend
        self.observer = observer
        # Every request, probe included, goes through it (off unless given one).
        self.breaker = breaker or CircuitBreaker(threshold=0, backend=backend)
        # The backend's WADO-RS rate limit (ratelimit.py): one bucket on this client's
        # request path, which every association to the backend shares.
        self.rate_limit = ratelimit.install_wado_rate_limit(http, capabilities)
        if self.rate_limit is not None:
            self.raw = None  # the lean GET would bypass httpx's request path

    async def _observed(self, kind: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run one HTTP exchange, reporting its outcome and duration to the observer."""
        started = time.monotonic()
        outcome = "200"
        try:
            result = await attempt()
        except DicomwebError as exc:
            outcome = outcome_of(exc)
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if self.observer is not None:
                self.observer(self.backend, kind, outcome, time.monotonic() - started)
        return result

    async def _read(self, kind: str, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """An idempotent read, retried as RetryPolicy allows."""
        return await retrying(
            lambda: self._observed(kind, attempt),
            self.policy,
            idempotent=True,
            what=what,
            breaker=self.breaker,
        )

    async def search(self, query: QidoQuery, *, offset: int, limit: int) -> QidoPage:
        """One page of a QIDO-RS search."""
        url = build_qido_url(
            self.base_url, query, offset=offset, limit=limit, policy=self.query_encoding
        )
        return await self._read("qido", "QIDO-RS", lambda: self._search_once(url))

    def search_pages(self, query: QidoQuery) -> Pager:
        """Every page of a QIDO-RS search, one ``await pager.next()`` at a time."""
        return Pager(self, query, self.page_size, self.capabilities)

    async def _search_once(self, url: str) -> QidoPage:
        LOGGER.debug("QIDO-RS %s", url)
        with map_errors(url):
            response = await self.http.get(url, headers={"Accept": DICOM_JSON})
        raise_for_status(response)
        if response.status_code == 204:
            return QidoPage(results=[])
        results = parse_qido_body(response.content, response.headers.get("content-type", ""))
        return QidoPage(results=list(results), more_hinted=_more_hinted(response))

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.raw is not None:
            await self.raw.aclose()

    def instance_url(
        self,
        ref: InstanceRef,
        *,
        frames: Sequence[int] | None = None,
        suffix: URISuffix | None = None,
    ) -> str:
        """A WADO-RS resource URL, built and checked by dicomweb-client's URI (permissive:
        archives do hold UIDs that break the PS3.5 rules)."""
        return str(
            URI(
                self.base_url,
                ref.study_uid,
                ref.series_uid,
                ref.sop_instance_uid,
                frames=frames,
                suffix=suffix,
                permissive=True,
            )
        )

    async def retrieve_instance(self, ref: InstanceRef, transfer_syntax: str = ANY_SYNTAX) -> bytes:
        """WADO-RS one instance as a Part 10 file, in `transfer_syntax` (``*`` = as stored)."""
        url = self.instance_url(ref)
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'
        parts = await self._get_multipart(url, accept)
        if len(parts) != 1:
            raise DicomwebProtocolError(
                f"WADO-RS instance answer has {len(parts)} parts instead of 1"
            )
        return parts[0].content

    async def retrieve_instance_transcoded(self, ref: InstanceRef, transfer_syntax: str) -> bytes:
        """WADO-RS one instance in `transfer_syntax` when the server can transcode it to
        that, else as stored (the caller checks what it got): a series may mix syntaxes,
        and the server may not transcode from every one (the outcome table's
        ``as_stored`` column says which answers mean that)."""
        try:
            return await self.retrieve_instance(ref, transfer_syntax)
        except DicomwebError as exc:
            if transfer_syntax == ANY_SYNTAX or not fetch_as_stored_instead(exc):
                raise
        return await self.retrieve_instance(ref, ANY_SYNTAX)

    async def retrieve_metadata(self, ref: InstanceRef) -> dict[str, Any]:
        """WADO-RS metadata of one instance (DICOM JSON, bulk data as BulkDataURI)."""
        url = self.instance_url(ref, suffix=URISuffix.METADATA)
        return await self._read("wado", "WADO-RS metadata", lambda: self._metadata_once(url))

    async def _metadata_once(self, url: str) -> dict[str, Any]:
        with map_errors(url):
            response = await self.http.get(url, headers={"Accept": DICOM_JSON})
        raise_for_status(response)
        results = parse_qido_body(response.content, response.headers.get("content-type", ""))
        if len(results) != 1:
            raise DicomwebProtocolError(f"instance metadata has {len(results)} objects, not 1")
        return results[0]

    async def retrieve_frames(
        self, ref: InstanceRef, frames: Sequence[int], transfer_syntax: str
    ) -> list[bytes]:
        """WADO-RS frames of one instance, one bytes object per frame, in request order."""
        url = self.instance_url(ref, frames=sorted(set(frames)))
        accept = (
            f'multipart/related; type="application/octet-stream"; transfer-syntax={transfer_syntax}'
        )
        return [part.content for part in await self._get_multipart(url, accept)]

    async def _get_multipart(self, url: str, accept: str) -> list[Part]:
        return await self._read("wado", "WADO-RS", lambda: self._get_multipart_once(url, accept))

    async def _get_multipart_once(self, url: str, accept: str) -> list[Part]:
        """GET a multipart/related resource and decode it while it streams in."""
        LOGGER.debug("WADO-RS %s", url)
        if self.raw is not None:
            response = await self.raw.request(url, {"Accept": accept, **_NO_GZIP})
            try:
                boundary = boundary_from_content_type(response.headers.get("content-type", ""))
                decoder = MultipartDecoder(boundary)
                parts: list[Part] = []
                async for chunk in response.chunks():
                    parts.extend(decoder.feed(chunk))
                parts.extend(decoder.close())
            finally:
                response.release()
            return parts
        with map_errors(url):
            async with self.http.stream("GET", url, headers={"Accept": accept, **_NO_GZIP}) as rsp:
                raise_for_status(rsp)
                boundary = boundary_from_content_type(rsp.headers.get("content-type", ""))
                decoder = MultipartDecoder(boundary)
                parts = []
                # No chunk_size: re-chunking copies every byte once more.
                async for chunk in rsp.aiter_raw():
                    parts.extend(decoder.feed(chunk))
                parts.extend(decoder.close())
        return parts

    async def store_instance(self, path: Path, sop_instance_uid: str) -> StowResult:
        """STOW-RS one Part 10 file, streamed from disk; the server's verdict on it.

        HTTP errors are part of the verdict (the caller maps them to C-STORE statuses);
        only transport failures raise.
        """
        url = f"{self.base_url}/studies"

        async def attempt() -> httpx.Response:
            encoder = MultipartEncoder()
            headers = {
                "Content-Type": encoder.content_type,
                "Accept": DICOM_JSON,
                **_NO_GZIP,
            }
            with map_errors(url):
                body = part10_body(
                    path, encoder, explicit_vr_only=not self.capabilities.stow_implicit_vr
                )
                return await self.http.post(url, content=body, headers=headers)

        # Not idempotent: retried only when no connection could be made at all.
        response = await retrying(
            lambda: self._observed("stow", attempt),
            self.policy,
            idempotent=False,
            what="STOW-RS",
            breaker=self.breaker,
        )
        LOGGER.debug("STOW-RS %s -> %d", url, response.status_code)
        result = parse_stow_response(
            response.status_code, response.content, sop_instance_uid, response.reason_phrase
        )
        if self.capabilities.stow_verify and stow.is_listed(result):
            if not await self._visible(path, sop_instance_uid):
                return stow.not_visible(result)
        return result

    async def _visible(self, path: Path, sop_instance_uid: str) -> bool:
        """Whether a stored instance is the one queries find (``stow_verify``): AWS files an
        instance whose metadata conflicts with a primary image set into a non-primary one,
        which QIDO-RS does not show; an instance of the same UID may then be listed with
        the primary set's metadata instead. A failed check is no proof: True (logged)."""
        sent = dcmread(path, stop_before_pixels=True, specific_tags=stow.IMAGE_SET_KEYS)
        query = QidoQuery(
            resource=QidoResource.INSTANCES,
            study_uid=str(sent.get("StudyInstanceUID", "")),
            series_uid=str(sent.get("SeriesInstanceUID", "")),
            match=(("SOPInstanceUID", sop_instance_uid),),
            includefield=tuple(stow.STUDY_KEYS),
        )
        url = build_qido_url(self.base_url, query, policy=self.query_encoding)
        try:
            page = await self._read("qido", "QIDO-RS", lambda: self._search_once(url))
        except DicomwebError as exc:
            LOGGER.warning("could not check that a stored instance is visible: %s", exc)
            return True
        return stow.shows_instance(page.results, sent, sop_instance_uid)

    async def probe(self) -> str:
        """Check that the base URL answers QIDO-RS; a one-line summary, or a DicomwebError.

        Not retried. It passes the circuit breaker like any request: while the breaker
        is open it fails at once, and after the cool-down it is the probe that closes it.
        """
        return await retrying(
            lambda: self._observed("probe", self._probe_once),
            _NO_RETRY,
            idempotent=True,
            what="probe",
            breaker=self.breaker,
        )

    async def _probe_once(self) -> str:
        url = f"{self.base_url}/studies?limit=1"
        with map_errors(url):
            response = await self.http.get(url, headers={"Accept": DICOM_JSON})
        if response.status_code >= 400 and http_row(response.status_code).refused:
            raise DicomwebHTTPError(response.status_code, "authentication refused", url)
        if response.status_code == 404:
            raise DicomwebHTTPError(404, "not found: is the URL the DICOMweb root?", url)
        raise_for_status(response)
        content_type = response.headers.get("content-type", "")
        if response.status_code != 204 and "json" not in content_type.lower():
            raise DicomwebProtocolError(
                f"{url} answered {content_type or 'no content type'}, not DICOM JSON: "
                "not a DICOMweb endpoint"
            )
        results = parse_qido_body(response.content, content_type)
        server = response.headers.get("server", "unknown server")
        return f"QIDO-RS answered HTTP {response.status_code} ({len(results)} result, {server})"


def make_http_client(config: DicomwebConfig, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
    """The HTTP client of one backend: timeouts, connection cap, TLS and auth as configured."""
    return httpx.AsyncClient(
        # No pool timeout: waiting for one of the capped connections is not the server's
        # fault, and a cancel still interrupts the wait.
        timeout=httpx.Timeout(config.timeout, pool=None),
        limits=httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
            # Orthanc drops idle keep-alive connections after 1 s; expire ours sooner so a
            # request rarely lands on a connection the server is closing.
            keepalive_expiry=0.8,
        ),
        verify=tls_context(config),
        auth=auth,
        follow_redirects=False,
    )


def make_client(
    config: DicomwebConfig,
    *,
    backend: str = "default",
    observer: Observer | None = None,
    auth: httpx.Auth | None = None,
    fast_http: bool = True,
    breaker_listener: Listener | None = None,
) -> DicomwebClient:
    """A DicomwebClient for one configured backend. Call it on the event loop's thread;
    build `auth` (``build_auth``) before, since it may block or raise ConfigError."""
    policy = RetryPolicy(deadline=config.retry_deadline, max_retries=config.max_retries)
    breaker = CircuitBreaker(
        config.breaker_threshold,
        config.breaker_cooldown,
        backend=backend,
        listener=breaker_listener,
    )
    raw = None
    # httpx honours HTTP(S)_PROXY from the environment; the lean client does not, so it
    # stands aside whenever a proxy is configured, as it does for authentication.
    proxied = any(
        os.environ.get(name)
        for name in (
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        )
    )
    if fast_http and auth is None and not proxied:
        raw = RawGetter(
            timeout=config.timeout,
            ssl_context=tls_context(config),
            max_connections=config.max_connections,
        )
    return DicomwebClient(
        make_http_client(config, auth),
        config.url,
        query_encoding=config.query_encoding,
        policy=policy,
        backend=backend,
        observer=observer,
        raw=raw,
        breaker=breaker,
        page_size=config.page_size,
        capabilities=config.capabilities,
    )


def tls_context(config: DicomwebConfig) -> ssl.SSLContext:
    """Certificate verification (on by default), a custom CA bundle, a client certificate."""
    if config.verify:
        context = ssl.create_default_context(cafile=config.ca_bundle or None)
    else:
        # Still a context, not False: a client certificate may be needed all the same.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_cert:
        context.load_cert_chain(config.client_cert, config.client_key or None)
    return context
