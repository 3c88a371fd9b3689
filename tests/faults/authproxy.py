"""An authenticating HTTP reverse proxy and a tiny OAuth2 token endpoint, for the auth tests.

Usage::

    with AuthProxy("http://127.0.0.1:8042", mode="bearer", tokens={"t1"}) as proxy:
        ...  # point the bridge at proxy.url + "/dicom-web"
        proxy.add_token("t2"); proxy.revoke_token("t1")

Modes (the check made on every request before it is forwarded):

* ``bearer``: ``Authorization: Bearer <t>`` with ``t`` among the valid tokens (static ones
  given to the constructor or ``add_token``, revocable at run time, and those the token
  endpoint issued, until they expire); otherwise 401.
* ``sigv4``: an AWS Signature Version 4 ``Authorization`` header, verified by recomputing
  the signature with botocore for the request as received (``verify_sigv4``); 403 on a
  mismatch, an unknown key, a stale date or a payload hash that does not match the body.
* ``none``: everything is forwarded.

``POST /token`` is never forwarded: it is a token endpoint that issues short-lived random
tokens (``expires_in`` seconds) for the client-credentials grant (``clients``: id ->
secret) and for Google's service-account JWT-bearer grant (``google_keys``: client_email
-> public key PEM; the assertion's signature, audience and expiry are verified with
google-auth). It counts what it issues and the most issues it ever had in flight at once.

Forwarding: stdlib ``http.server`` (a thread per connection, HTTP/1.1 keep-alive to the
client), a new upstream connection per request; request bodies (Content-Length or
chunked) are read whole, responses are streamed back (same Content-Length, or re-chunked
when the upstream sends none). ``Authorization`` is not forwarded: the proxy is where the
authentication ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["AuthProxy", "Issued", "ProxyRecord", "verify_sigv4"]

TOKEN_PATH = "/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_PIECE = 64 * 1024
_SIGV4_HEADER = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_MAX_CLOCK_SKEW_S = 300


@dataclass(frozen=True)
class ProxyRecord:
    """One request the proxy answered: how, and why it refused when it did."""

    method: str
    path: str
    status: int
    refused: str = ""  # the reason for a 401/403 the proxy gave itself, else ""
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Issued:
    """One token the token endpoint issued."""

    token: str
    grant: str
    subject: str  # client_id, or the service account's email
    scope: str  # the form's, or for a JWT grant the assertion's scope claim
    at: float
    expires_at: float


# --------------------------------------------------------------------------- SigV4 check


def _canonical_query(raw_query: str) -> str:
    # What AWS computes: every parameter decoded, re-encoded strictly (RFC 3986 unreserved
    # characters only), sorted by key then value, whatever encoding the request line used.
    pairs = []
    for part in raw_query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def verify_sigv4(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    keys: Mapping[str, str],
    region: str,
    service: str,
    session_tokens: Mapping[str, str] | None = None,
    allow_unsigned_payload: bool = False,
    now: datetime | None = None,
) -> str | None:
    """Why this request's SigV4 signature is not valid, or None when it is.

    `target` is the request line's path and query as received; `headers` maps lower-case
    names to values; `keys` maps access key ids to secret keys. The signature is
    recomputed with botocore from the received request and the signed headers it names.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    match = _SIGV4_HEADER.match(headers.get("authorization", "").strip())
    if match is None:
        return "no AWS4-HMAC-SHA256 Authorization header"
    scope = match["credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return "malformed credential scope"
    access_key, day, scope_region, scope_service, _ = scope
    if access_key not in keys:
        return "unknown access key"
    if (scope_region, scope_service) != (region, service):
        return f"scope is {scope_region}/{scope_service}, expected {region}/{service}"
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "no valid X-Amz-Date"
    if day != amz_date[:8]:
        return "credential scope date differs from X-Amz-Date"
    if abs(((now or datetime.now(UTC)) - when).total_seconds()) > _MAX_CLOCK_SKEW_S:
        return "X-Amz-Date too far from now"
    signed = match["signed"].split(";")
    if signed != sorted(signed) or "host" not in signed or "x-amz-date" not in signed:
        return "SignedHeaders must be sorted and include host and x-amz-date"
    missing = [name for name in signed if name not in headers]
    if missing:
        return f"signed headers missing from the request: {missing}"
    expected_token = (session_tokens or {}).get(access_key)
    if expected_token is not None and (
        "x-amz-security-token" not in signed
        or headers.get("x-amz-security-token") != expected_token
    ):
        return "security token missing, unsigned or wrong"
    content_hash = headers.get("x-amz-content-sha256")
    if content_hash == "UNSIGNED-PAYLOAD":
        if not allow_unsigned_payload:
            return "UNSIGNED-PAYLOAD not accepted here"
    elif content_hash is not None and content_hash != hashlib.sha256(body).hexdigest():
        return "x-amz-content-sha256 does not match the body"

    path, _, raw_query = target.partition("?")
    query = _canonical_query(raw_query)
    url = f"http://{headers['host']}{path}" + (f"?{query}" if query else "")
    aws_request = AWSRequest(
        method=method, url=url, headers={name: headers[name] for name in signed}, data=body
    )
    aws_request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, keys[access_key]), service, region)
    canonical = signer.canonical_request(aws_request)
    expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
    if not hmac.compare_digest(expected, match["signature"]):
        return "signature mismatch"
    return None


# --------------------------------------------------------------------------- the proxy


class AuthProxy:
    """A verifying reverse proxy in front of `upstream` (None: only the token endpoint)."""

    def __init__(
        self,
        upstream: str | None = None,
        *,
        mode: str = "bearer",
        tokens: Iterable[str] = (),
        clients: Mapping[str, str] | None = None,
        google_keys: Mapping[str, str] | None = None,
        expires_in: int = 3600,
        token_delay_s: float = 0.0,
        aws_keys: Mapping[str, str] | None = None,
        aws_session_tokens: Mapping[str, str] | None = None,
        region: str = "us-east-1",
        service: str = "medical-imaging",
        allow_unsigned_payload: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        if mode not in ("bearer", "sigv4", "none"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.upstream = urlsplit(upstream) if upstream else None
        self.clients = dict(clients or {})
        self.google_keys = dict(google_keys or {})
        self.expires_in = expires_in
        self.token_delay_s = token_delay_s
        self.aws_keys = dict(aws_keys or {})
        self.aws_session_tokens = dict(aws_session_tokens or {})
        self.region = region
        self.service = service
        self.allow_unsigned_payload = allow_unsigned_payload
        self.records: list[ProxyRecord] = []
        self.issued: list[Issued] = []
        self.max_concurrent_issues = 0
        self._issuing = 0
        # token -> monotonic expiry (None: until revoked)
        self._tokens: dict[str, float | None] = dict.fromkeys(tokens)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), _make_handler(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="authproxy", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- tokens

    def add_token(self, token: str, lifetime_s: float | None = None) -> None:
        with self._lock:
            self._tokens[token] = None if lifetime_s is None else time.monotonic() + lifetime_s

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def revoke_all(self) -> None:
        with self._lock:
            self._tokens.clear()

    def token_valid(self, token: str) -> bool:
        with self._lock:
            if token not in self._tokens:
                return False
            expiry = self._tokens[token]
            return expiry is None or time.monotonic() < expiry

    @property
    def issue_count(self) -> int:
        with self._lock:
            return len(self.issued)

    def refused(self) -> list[ProxyRecord]:
        with self._lock:
            return [r for r in self.records if r.refused]

    def forwarded(self) -> list[ProxyRecord]:
        with self._lock:
            return [r for r in self.records if not r.refused and r.path != TOKEN_PATH]

    def _record(self, record: ProxyRecord) -> None:
        with self._lock:
            self.records.append(record)

    # -- checks

    def check(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> str:
        """'' when the request may be forwarded, else why not."""
        if self.mode == "none":
            return ""
        if self.mode == "bearer":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return "no bearer token"
            return "" if self.token_valid(token.strip()) else "invalid, expired or revoked token"
        reason = verify_sigv4(
            method,
            target,
            headers,
            body,
            keys=self.aws_keys,
            region=self.region,
            service=self.service,
            session_tokens=self.aws_session_tokens,
            allow_unsigned_payload=self.allow_unsigned_payload,
        )
        return reason or ""

    def issue(
        self, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """The token endpoint: (status, JSON answer)."""
        with self._lock:
            self._issuing += 1
            self.max_concurrent_issues = max(self.max_concurrent_issues, self._issuing)
        try:
            if self.token_delay_s:
                time.sleep(self.token_delay_s)  # widens the window in which overlaps show
            grant = form.get("grant_type", "")
            scope = form.get("scope", "")
            if grant == "client_credentials":
                subject, error = self._client_credentials(form, headers)
            elif grant == JWT_BEARER_GRANT:
                subject, scope, error = self._jwt_bearer(form.get("assertion", ""))
            else:
                subject, error = "", "unsupported_grant_type"
            if error:
                status = 401 if error == "invalid_client" else 400
                return status, {"error": error}
            token = secrets.token_urlsafe(24)
            now = time.monotonic()
            issued = Issued(token, grant, subject, scope, now, now + self.expires_in)
            with self._lock:
                self._tokens[token] = issued.expires_at
                self.issued.append(issued)
            return 200, {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            }
        finally:
            with self._lock:
                self._issuing -= 1

    def _client_credentials(
        self, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[str, str]:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":  # client_secret_basic, RFC 6749 2.3.1
            client_id, _, secret = base64.b64decode(value).decode().partition(":")
        expected = self.clients.get(client_id)
        if expected is None or not hmac.compare_digest(expected, secret):
            return client_id, "invalid_client"
        return client_id, ""

    def _jwt_bearer(self, assertion: str) -> tuple[str, str, str]:
        """(issuer, scope claim, error) of a service account's signed JWT assertion."""
        from google.auth import jwt

        try:
            claims = jwt.decode(assertion, verify=False)
            issuer = str(claims.get("iss", ""))
            key = self.google_keys.get(issuer)
            if key is None:
                return issuer, "", "invalid_grant"
            # Signature, audience and the iat/exp window. google-auth addresses service
            # account assertions to Google's endpoint whatever the file's token_uri says.
            jwt.decode(assertion, certs=key, audience=[GOOGLE_TOKEN_AUDIENCE, self.token_url])
        except ValueError:
            return "", "", "invalid_grant"
        return issuer, str(claims.get("scope", "")), ""


def _make_handler(proxy: AuthProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows the records on failure instead

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _answer(self, status: int, payload: dict[str, Any], extra: Mapping[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            body = self._read_body()
            headers = {name.lower(): value for name, value in self.headers.items()}
            path = self.path.split("?", 1)[0]
            if path == TOKEN_PATH and self.command == "POST":
                form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
                status, payload = proxy.issue(form, headers)
                proxy._record(ProxyRecord(self.command, path, status))
                self._answer(status, payload, {"Cache-Control": "no-store"})
                return
            reason = proxy.check(self.command, self.path, headers, body)
            if reason:
                status = 403 if proxy.mode == "sigv4" else 401
                challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                proxy._record(ProxyRecord(self.command, path, status, refused=reason))
                self._answer(status, {"message": reason}, challenge if status == 401 else {})
                return
            if proxy.upstream is None:
                proxy._record(ProxyRecord(self.command, path, 404))
                self._answer(404, {"message": "no upstream"}, {})
                return
            status = self._forward(headers, body)
            proxy._record(ProxyRecord(self.command, path, status))

        def _forward(self, headers: Mapping[str, str], body: bytes) -> int:
            upstream = proxy.upstream
            assert upstream is not None and upstream.hostname is not None
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port or 80, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", upstream.netloc)
                for name, value in headers.items():
                    if name in _HOP_BY_HOP or name in ("host", "authorization", "content-length"):
                        continue
                    conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.putheader("Connection", "close")
                conn.endheaders(body)
                response = conn.getresponse()
                self.send_response(response.status, response.reason)
                length = response.getheader("Content-Length")
                bodiless = response.status in (204, 304) or self.command == "HEAD"
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                if length is not None:
                    self.send_header("Content-Length", length)
                elif bodiless:
                    pass
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while piece := response.read(_PIECE):
                    if length is None and not bodiless:
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    else:
                        self.wfile.write(piece)
                if length is None and not bodiless:
                    self.wfile.write(b"0\r\n\r\n")
                return response.status
            finally:
                conn.close()

    return Handler
