"""Conformance emulator: the tests' FaultProxy in front of the real Orthanc, answering as
one cloud DICOMweb server would (generic, orthanc, google, azure, aws, dcm4chee).

Usage::

    with ConformanceEmulator(orthanc.http_url, "azure") as emu:
        ...  # point the bridge at emu.dicomweb_url
        emu.assert_refused_nothing()

What it does per request, with the vendor model of tests/cloud/vendor.py (each model cites
the vendor pages it was built from):

* QIDO-RS: refuses (400, or 404 for a resource the vendor does not have) any parameter,
  value form (wildcard, UID or value list, range, empty value) or limit/offset the vendor
  does not take, and includefield values it refuses. For vendors that page differently
  from Orthanc it asks Orthanc for the full answer (no limit/offset) and pages it itself:
  the vendor's largest and default limit, 204 for an empty page (Azure), newest-first
  (Azure, AWS studies) or number order (AWS series/instances), the 10,000-record cap
  (AWS), no NumberOf*Related* counts and no Warning header (Google), and fuzzymatching as
  a prefix word match on person names (Orthanc ignores fuzzymatching).
* WADO-RS: no study-level retrieve (AWS), 406 for an Accept transfer-syntax the vendor
  does not serve (Azure: *, Explicit VR LE, JPEG 2000 lossless; AWS: *, Explicit VR LE or
  the stored syntax, read from Orthanc), and 429 with Retry-After past the request rate
  (AWS: 50 per second, bursts of 100; a token bucket).
* STOW-RS: refuses implicit-VR data sets and missing PatientID (Azure: failure 43264 in a
  FailedSOPSequence, 202 if others were stored, 409 if none), and answers a duplicate SOP
  Instance UID as the vendor does (Azure 45070; Google 409 ALREADY_EXISTS; AWS 200 without
  storing it: a non-primary image set that QIDO-RS does not show).

Every request is recorded (``records()``, from FaultProxy) and every refusal too
(``refusals()``), so a test can assert that the emulator refused nothing. FaultProxy
rules still apply: an action (stall, truncate, reset, status) replaces the vendor's answer,
a delay delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import unquote

from pydicom import dcmread

from tests.cloud.vendor import (
    IMPLICIT_VR_LE,
    VENDORS,
    Refusal,
    Route,
    Vendor,
    check_qido,
    check_wado,
    fuzzy_filters,
    keyword_of,
    needs_stored_syntax,
    parse_route,
    shape_search,
    split_query,
)
from tests.faults.proxy import Fault, FaultProxy, RequestRecord, _header, _Request, _State

__all__ = ["ConformanceEmulator", "RefusalRecord"]

DICOM_JSON = "application/dicom+json"
# Azure STOW-RS failure reasons (conformance statement v2, "Store failure reason codes").
AZURE_VALIDATION_FAILED = 43264
AZURE_ALREADY_STORED = 45070
_FETCH_LIMIT = 1 << 20


@dataclass(frozen=True)
class RefusalRecord:
    """One request the emulator refused (or answered as a vendor-specific failure)."""

    index: int  # the RequestRecord index
    method: str
    path: str
    kind: str  # search / retrieve / store / rate / duplicate
    status: int
    reason: str


@dataclass
class _Part:
    headers: bytes
    body: bytes


def _split_multipart(body: bytes, boundary: bytes) -> list[_Part]:
    delimiter = b"--" + boundary
    parts: list[_Part] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(_Part(head, content.removesuffix(b"\r\n")))
    return parts


def _join_multipart(parts: list[_Part], boundary: bytes) -> bytes:
    out = bytearray()
    for part in parts:
        out += b"--" + boundary + b"\r\n" + part.headers + b"\r\n\r\n" + part.body + b"\r\n"
    out += b"--" + boundary + b"--\r\n"
    return bytes(out)


def _boundary(content_type: str | None) -> bytes | None:
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip().strip('"').encode("latin-1")
    return None


def _failed_item(sop_class: str, sop_uid: str, reason: int) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [sop_uid]},
        "00081197": {"vr": "US", "Value": [reason]},
    }


def _stored_item(sop_class: str, sop_uid: str) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [sop_uid]},
    }


class ConformanceEmulator(FaultProxy):
    """A FaultProxy that enforces one vendor's documented DICOMweb limits (see module doc).

    `upstream` is Orthanc's HTTP root; the DICOMweb root below it is `root`. Point the
    code under test at :attr:`dicomweb_url`.
    """

    def __init__(
        self,
        upstream: str,
        vendor: str | Vendor,
        *,
        root: str = "/dicom-web",
        **kwargs: Any,
    ) -> None:
        super().__init__(upstream, **kwargs)
        self.vendor = VENDORS[vendor] if isinstance(vendor, str) else vendor
        self.root = "/" + root.strip("/")
        self._refusals: list[RefusalRecord] = []
        self._refusal_lock = threading.Lock()
        self._tokens = float(self.vendor.wado_burst)
        self._tokens_at = time.monotonic()

    @property
    def dicomweb_url(self) -> str:
        return self.url + self.root

    # ----------------------------------------------------------------- refusals

    def refusals(self, kind: str | None = None) -> list[RefusalRecord]:
        """Every refusal so far, in order (only those of `kind` if given)."""
        with self._refusal_lock:
            return [r for r in self._refusals if kind is None or r.kind == kind]

    def assert_refused_nothing(self) -> None:
        refused = self.refusals()
        assert not refused, f"the {self.vendor.name} emulator refused: {refused}"

    def clear(self) -> None:
        """Forget recorded requests and refusals (the fault plan is kept)."""
        super().clear()
        with self._refusal_lock:
            self._refusals = []

    def reset_rate(self) -> None:
        """Refill the WADO-RS token bucket (between tests)."""
        self._tokens = float(self.vendor.wado_burst)
        self._tokens_at = time.monotonic()

    def _note(self, rec: RequestRecord, kind: str, status: int, reason: str) -> None:
        with self._refusal_lock:
            self._refusals.append(
                RefusalRecord(rec.index, rec.method, rec.path, kind, status, reason)
            )

    async def _refuse(
        self,
        req: _Request,
        rec: RequestRecord,
        writer: asyncio.StreamWriter,
        kind: str,
        refusal: Refusal,
    ) -> bool:
        self._note(rec, kind, refusal.status, refusal.reason)
        self._update(rec, fault=f"{self.vendor.name}:{kind}:{refusal.status}")
        body = refusal.body if refusal.body is not None else (refusal.reason + "\n").encode()
        return await self._send_simple(req, rec, writer, refusal.status, body, refusal.headers)

    # ----------------------------------------------------------------- dispatch

    async def _respond_inner(
        self,
        req: _Request,
        rec: RequestRecord,
        fault: Fault | None,
        writer: asyncio.StreamWriter,
        state: _State,
    ) -> bool:
        path, _, query = req.target.partition("?")
        if fault is not None and fault.kind not in ("pass", "delay", "throttle"):
            return await super()._respond_inner(req, rec, fault, writer, state)
        if not path.startswith(self.root + "/"):
            return await super()._respond_inner(req, rec, fault, writer, state)
        if fault is not None and fault.delay_s > 0:
            # A delay rule delays the vendor's answer (throttles apply to pass-through only).
            await asyncio.sleep(fault.delay_s)
        route = parse_route(req.method, unquote(path[len(self.root) :]))
        if route.kind == "search":
            return await self._search(req, rec, writer, state, route, query)
        if route.kind == "retrieve":
            refusal = self._rate_limited()
            if refusal is not None:
                return await self._refuse(req, rec, writer, "rate", refusal)
            accept = req.header("accept")
            stored = None
            if needs_stored_syntax(self.vendor, route, accept):
                stored = await self._stored_syntaxes(route)
            refusal = check_wado(self.vendor, route, accept, stored)
            if refusal is not None:
                return await self._refuse(req, rec, writer, "retrieve", refusal)
        if route.kind == "store":
            return await self._store(req, rec, writer, state)
        return await super()._respond_inner(req, rec, None, writer, state)

    def _rate_limited(self) -> Refusal | None:
        v = self.vendor
        if not v.wado_rate:
            return None
        now = time.monotonic()
        refill = (now - self._tokens_at) * v.wado_rate
        self._tokens = min(float(v.wado_burst), self._tokens + refill)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        wait = max(1, math.ceil((1.0 - self._tokens) / v.wado_rate))
        return Refusal(
            429,
            f"more than {v.wado_rate:g} WADO-RS requests per second (burst {v.wado_burst})",
            headers=(("Retry-After", str(wait)),),
        )

    # ----------------------------------------------------------------- QIDO-RS

    async def _search(
        self,
        req: _Request,
        rec: RequestRecord,
        writer: asyncio.StreamWriter,
        state: _State,
        route: Route,
        query: str,
    ) -> bool:
        v = self.vendor
        params = split_query(query)
        refusal = check_qido(v, route, params)
        if refusal is not None:
            return await self._refuse(req, rec, writer, "search", refusal)
        if not v.pages_itself:
            return await super()._respond_inner(req, rec, None, writer, state)
        # Ask Orthanc for everything; the vendor's paging, order and fuzzy matching are
        # done here on the full answer.
        fuzzy = fuzzy_filters(v, params)
        kept: list[str] = []
        extra: list[str] = []
        for raw in query.split("&"):
            if not raw:
                continue
            name = unquote(raw.partition("=")[0])
            if name in ("limit", "offset", "fuzzymatching"):
                continue
            if keyword_of(name) in fuzzy:
                extra.append(keyword_of(name) or name)
                continue
            kept.append(raw)
        level = v.level(route.resource)
        if level == "series":
            extra.append("SeriesNumber")
        elif level == "instances":
            extra.append("InstanceNumber")
        kept += [f"includefield={name}" for name in extra]
        target = req.target.partition("?")[0] + ("?" + "&".join(kept) if kept else "")
        status, headers, body = await self._fetch("GET", target, {"Accept": DICOM_JSON})
        if status != 200:
            content_type = _header(headers, "content-type") or "text/plain"
            return await self._send_simple(
                req, rec, writer, status, body, [("Content-Type", content_type)]
            )
        rows = json.loads(body) if body.strip() else []
        recency = None
        if "newest" in v.order.values():
            recency = await self._recency(v.level(route.resource))
        shaped = shape_search(v, route, params, rows, recency)
        if shaped.rows is None:
            return await self._send_simple(req, rec, writer, shaped.status, b"")
        payload = json.dumps(shaped.rows).encode()
        return await self._send_simple(
            req, rec, writer, shaped.status, payload, [("Content-Type", DICOM_JSON)]
        )

    # ----------------------------------------------------------------- upstream helpers

    async def _fetch(
        self, method: str, target: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to Orthanc on its own connection, the whole answer read."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self._up_host, self._up_port, limit=_FETCH_LIMIT),
            self._connect_timeout_s,
        )
        try:
            lines = [f"{method} {self._up_prefix}{target} HTTP/1.1", f"Host: {self._up_netloc}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            lines += [f"Content-Length: {len(body)}", "Accept-Encoding: identity"]
            lines += ["Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + body)
            await writer.drain()
            raw = await reader.read(-1)
        finally:
            writer.transport.abort()
        head, _, content = raw.partition(b"\r\n\r\n")
        head_lines = head.decode("latin-1").split("\r\n")
        status = int(head_lines[0].split(" ")[1])
        parsed = []
        for line in head_lines[1:]:
            name, _, value = line.partition(":")
            parsed.append((name.strip(), value.strip()))
        if "chunked" in (_header(parsed, "transfer-encoding") or "").lower():
            content = _dechunk(content)
        elif (length := _header(parsed, "content-length")) is not None:
            content = content[: int(length)]
        return status, parsed, content

    async def _json(self, method: str, target: str, body: bytes = b"") -> Any:
        status, _, content = await self._fetch(method, target, {"Accept": "application/json"}, body)
        if status != 200:
            return None
        return json.loads(content) if content.strip() else None

    async def _recency(self, level: str) -> dict[str, int]:
        """UID -> sequence number of its creation in Orthanc (its /changes feed): what
        "newest first" is measured by, since Orthanc's own answers are in no time order."""
        change = {"studies": "NewStudy", "series": "NewSeries", "instances": "NewInstance"}
        seq_of: dict[str, int] = {}
        since = 0
        while True:
            feed = await self._json("GET", f"/changes?since={since}&limit=1000") or {}
            for item in feed.get("Changes", []):
                if item.get("ChangeType") == change[level]:
                    seq_of[item["ID"]] = int(item["Seq"])
            since = int(feed.get("Last", since))
            if feed.get("Done", True):
                break
        uid_key = {"studies": "StudyInstanceUID", "series": "SeriesInstanceUID"}
        keyword = uid_key.get(level, "SOPInstanceUID")
        listing = await self._json("GET", f"/{level}?expand") or []
        return {str(r["MainDicomTags"].get(keyword, "")): seq_of.get(r["ID"], -1) for r in listing}

    async def _stored_syntaxes(self, route: Route) -> frozenset[str]:
        """The transfer syntaxes Orthanc stores the addressed series or instance in."""
        uid = route.instance_uid or route.series_uid or ""
        found = await self._json("POST", "/tools/lookup", uid.encode())
        if not found:
            return frozenset()
        resource = found[0]
        ids = [resource["ID"]]
        if resource["Type"] == "Series":
            ids = [i["ID"] for i in await self._json("GET", f"/series/{ids[0]}/instances") or []]
        syntaxes: set[str] = set()
        for orthanc_id in ids:
            status, _, content = await self._fetch(
                "GET", f"/instances/{orthanc_id}/metadata/TransferSyntax", {}
            )
            if status == 200:
                syntaxes.add(content.decode().strip())
        return frozenset(syntaxes)

    async def _exists(self, sop_uid: str) -> bool:
        rows = await self._json(
            "GET", f"{self.root}/instances?SOPInstanceUID={sop_uid}&includefield=00080018"
        )
        return bool(rows)

    # ----------------------------------------------------------------- STOW-RS

    async def _store(
        self,
        req: _Request,
        rec: RequestRecord,
        writer: asyncio.StreamWriter,
        state: _State,
    ) -> bool:
        v = self.vendor
        boundary = _boundary(req.header("content-type"))
        if boundary is None:
            return await super()._respond_inner(req, rec, None, writer, state)
        parts = _split_multipart(req.body, boundary)
        forward: list[_Part] = []
        failed: list[dict[str, Any]] = []
        already: list[dict[str, Any]] = []
        for part in parts:
            try:
                ds = dcmread(BytesIO(part.body), stop_before_pixels=True)
            except Exception:  # not DICOM: let Orthanc answer it
                forward.append(part)
                continue
            syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
            sop_class = str(ds.get("SOPClassUID", ""))
            sop_uid = str(ds.get("SOPInstanceUID", ""))
            if not v.stow_implicit_vr and syntax == IMPLICIT_VR_LE:
                failed.append(_failed_item(sop_class, sop_uid, AZURE_VALIDATION_FAILED))
                self._note(rec, "store", 409, f"{sop_uid}: implicit VR transfer syntax")
                continue
            if v.stow_requires_patient_id and "PatientID" not in ds:
                failed.append(_failed_item(sop_class, sop_uid, AZURE_VALIDATION_FAILED))
                self._note(rec, "store", 409, f"{sop_uid}: PatientID missing")
                continue
            if v.duplicates != "orthanc" and sop_uid and await self._exists(sop_uid):
                self._note(rec, "duplicate", 409, f"{sop_uid} already stored")
                if v.duplicates == "google":
                    error = {
                        "error": {
                            "code": 409,
                            "message": f"instance {sop_uid} already exists",
                            "status": "ALREADY_EXISTS",
                        }
                    }
                    return await self._send_simple(
                        req,
                        rec,
                        writer,
                        409,
                        json.dumps(error).encode(),
                        [("Content-Type", "application/json")],
                    )
                if v.duplicates == "azure":
                    failed.append(_failed_item(sop_class, sop_uid, AZURE_ALREADY_STORED))
                else:  # aws: filed apart, listed as stored
                    already.append(_stored_item(sop_class, sop_uid))
                continue
            forward.append(part)
        if not failed and not already:
            return await super()._respond_inner(req, rec, None, writer, state)
        answer: dict[str, Any] = {}
        status = 409
        if forward:
            headers = {
                "Content-Type": req.header("content-type") or "",
                "Accept": DICOM_JSON,
            }
            status, _, content = await self._fetch(
                "POST", req.target, headers, _join_multipart(forward, boundary)
            )
            with contextlib.suppress(ValueError):
                answer = json.loads(content) if content.strip() else {}
        if already:
            stored = answer.setdefault("00081199", {"vr": "SQ", "Value": []})
            stored.setdefault("Value", []).extend(already)
            status = 200 if not forward else status
        if failed:
            failures = answer.setdefault("00081198", {"vr": "SQ", "Value": []})
            failures.setdefault("Value", []).extend(failed)
            stored_any = bool(answer.get("00081199", {}).get("Value"))
            status = 202 if stored_any else 409
        return await self._send_simple(
            req, rec, writer, status, json.dumps(answer).encode(), [("Content-Type", DICOM_JSON)]
        )


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
