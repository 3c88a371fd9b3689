"""The bridge's exception tree; every third-party error is mapped into it in one place.

::

    BridgeError
    ├── ConfigError                 invalid configuration (file, key, what was expected)
    ├── ListenError                 a listener (DIMSE, DICOM TLS, ops) cannot bind
    ├── TranslationError            an identifier the bridge cannot translate
    │   ├── InvalidIdentifier       missing/invalid level, keys that do not fit the level
    │   └── QueryTooBroad           what the server can match leaves too many rows to
    │                               filter locally, or it cannot be asked at all
    │   └── ReencodeError           a data set that cannot be re-encoded for the server
    └── DicomwebError               anything that went wrong talking to the DICOMweb server
        ├── DicomwebUnavailable     connection refused, DNS failure, reset before an answer
        │   └── DicomwebCircuitOpen the server was unreachable for several requests in a
        │                           row: not asked at all (bridge/dicomweb/breaker.py)
        ├── DicomwebTLSError        the TLS handshake failed (certificate not trusted, ...)
        ├── DicomwebTimeout         no answer within the configured timeout
        ├── DicomwebHTTPError       the server answered with a 4xx/5xx status
        ├── DicomwebPagingLimit     the server cannot page further (offset or record cap)
        └── DicomwebProtocolError   the answer is not what DICOMweb promises (bad JSON, multipart)

``dicomweb/client.py`` is the only module that turns ``httpx`` exceptions into these.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; the message names the file, the key and what was expected."""

    def __init__(self, source: str, key: str, expected: str) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        super().__init__(f"{source}: {key}: {expected}")


class ListenError(BridgeError):
    """A listening socket could not be opened."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"cannot listen on {address}: {reason}")


class TranslationError(BridgeError):
    """A DIMSE request cannot be translated into DICOMweb."""


class InvalidIdentifier(TranslationError):
    """The request identifier is malformed or does not fit the query level / model."""


class QueryTooBroad(TranslationError):
    """The server cannot match part of a query and the rest matches too many rows to be
    filtered locally within ``dicomweb.max_results`` (or cannot be asked at all); the
    message names a key to add (C-FIND/C-GET/C-MOVE answer 0xA700)."""


class ReencodeError(TranslationError):
    """A data set cannot be re-encoded as the DICOMweb server needs it (explicit VR)."""


class DicomwebError(BridgeError):
    """Talking to the DICOMweb server failed."""

    # True when the request provably never reached the server (no connection was made):
    # the one case where a non-idempotent request (STOW-RS) may be retried.
    never_sent: bool = False

    @property
    def busy(self) -> bool:
        """The server is unreachable, overloaded or failing: asking again later may work.

        The outcome table in ``bridge/dicomweb/outcomes.py`` decides (its ``busy``
        column), so that the DIMSE status mapping never inspects HTTP codes itself.
        """
        # Imported here: the table is written in terms of these classes. It imports only
        # this module, so the translate layer stays free of httpx.
        from bridge.dicomweb.outcomes import classify

        return classify(self).busy

    @property
    def credentials_refused(self) -> bool:
        """The server refused the bridge's credentials (the outcome table's ``refused``)."""
        from bridge.dicomweb.outcomes import classify

        return classify(self).refused


class DicomwebUnavailable(DicomwebError):
    """The DICOMweb server could not be reached."""


class DicomwebCircuitOpen(DicomwebUnavailable):
    """Not even tried: the backend's circuit breaker is open after an outage."""

    never_sent = True
    # One fixed text for every request failed this way, so that a C-GET's ErrorComment
    # counts them under one reason ("635 failed: <summary>").
    summary = "DICOMweb server unreachable (circuit open)"


class DicomwebTLSError(DicomwebError):
    """The TLS handshake with the DICOMweb server failed: a retry would fail the same way."""


class DicomwebTimeout(DicomwebError):
    """The DICOMweb server did not answer within the configured timeout."""


class DicomwebHTTPError(DicomwebError):
    """The DICOMweb server answered with an HTTP error status."""

    def __init__(
        self, status_code: int, reason: str, url: str, retry_after: float | None = None
    ) -> None:
        self.status_code = status_code
        self.reason = reason
        self.url = url
        # Seconds the server asked to wait (Retry-After), when it did.
        self.retry_after = retry_after
        super().__init__(f"HTTP {status_code} {reason} from {url}")


class DicomwebProtocolError(DicomwebError):
    """The DICOMweb server's answer could not be understood."""

    # True when the answer was cut short (broken framing, truncated body), which a retry
    # may cure; False when what arrived whole is wrong, which a retry would repeat.
    transient: bool = False


class DicomwebPagingLimit(DicomwebError):
    """The server cannot page further: the next page lies past its largest offset, or past
    the most records it ever lists (AWS HealthImaging: 10,000). Never a silent end."""
