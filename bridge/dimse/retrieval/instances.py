"""Each matching instance fetched ahead with WADO-RS and brought into a transfer syntax the
receiving peer accepted (``bridge.translate.syntax``): a ``SubOperation`` ready to send, or
why it cannot be sent. Closing the source cancels every fetch in flight."""


from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from bridge.dicomweb.client import ANY_SYNTAX
from bridge.dimse.context import BridgeContext
from bridge.dimse.fastsend import EncodedInstance, Part10Error
from bridge.dimse.retrieval.fetchahead import Prefetcher, PrefetchHandle
from bridge.errors import (
    BridgeError,
    DicomwebCircuitOpen,
    DicomwebError,
)
from bridge.loop_thread import Cancelled
from bridge.models import InstanceRef
from bridge.translate.frames import metadata_dataset
from bridge.translate.status import (
    describe,
)
from bridge.translate.syntax import (
    can_produce,
    cannot_send,
    is_compressed,
    is_lossy_conversion,
    is_sendable,
    local_syntax,
    no_context,
    server_syntax,
    short_name,
)
from bridge.translate.transcode import (
    ConversionError,
    can_decode,
    convert,
    decompress,
    local_encoders,
    mark_lossy_copy,
)

LOGGER = logging.getLogger(__name__)

_LOCAL = "local"  # syntax hint: fetch as stored and decompress here


class NoAcceptableContext(BridgeError):
    """The peer accepted no presentation context for the instance's SOP class."""


def accepted_syntaxes(contexts: Any, role: str) -> dict[str, frozenset[str]]:
    """Transfer syntaxes accepted per SOP class on contexts where we may act as `role`."""
    found: dict[str, set[str]] = {}
    for cx in contexts:
        if role == "scu" and cx.as_scu is False:
            continue
        found.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return {sop_class: frozenset(ts) for sop_class, ts in found.items()}


@dataclass(frozen=True)
class WadoAnswer:
    """What WADO-RS gave for one instance: a Part 10 file, or its metadata."""

    part10: bytes | None = None
    metadata: dict[str, Any] | None = None

    def size(self) -> int:
        # Metadata is small next to pixel data; count it as a nominal 64 KB.
        return len(self.part10) if self.part10 is not None else 65536


@dataclass
class SubOperation:
    """One instance ready to send (``dataset``), or why it cannot be (``error``)."""

    ref: InstanceRef
    dataset: Dataset | None = None
    error: str | None = None
    size: int = 0
    # The backend's circuit breaker is open: nothing more can be fetched from it.
    outage: bool = False


class InstanceSource:
    """Yields a SubOperation per instance, in order, fetched ahead; closing it cancels
    every fetch."""

    def __init__(
        self,
        ctx: BridgeContext,
        refs: list[InstanceRef],
        accepted: Mapping[str, frozenset[str]],
        cancelled: Callable[[], bool],
        *,
        metadata_only: bool = False,
    ) -> None:
        self.ctx = ctx
        # Composite Instance Retrieve Without Bulk Data: WADO-RS metadata, not instances.
        self.metadata_only = metadata_only
        self.refs = refs
        self.accepted = accepted
        self.cancelled = cancelled
        # (series, SOP class) → what to ask the server for, learned from earlier instances.
        self.hints: dict[tuple[str, str], str] = {}

    async def _fetch(self, ref: InstanceRef) -> WadoAnswer:
        if ref.sop_class_uid and not self.accepted.get(ref.sop_class_uid):
            raise NoAcceptableContext(no_context(ref.sop_class_uid))
        if self.metadata_only:
            return WadoAnswer(metadata=await self.ctx.client.retrieve_metadata(ref))
        key = (ref.series_uid, ref.sop_class_uid)
        hint = self.hints.get(key, ANY_SYNTAX)
        if hint in (ANY_SYNTAX, _LOCAL):
            return WadoAnswer(part10=await self.ctx.client.retrieve_instance(ref, ANY_SYNTAX))
        # As stored when the server cannot transcode this instance: _prepare decides.
        return WadoAnswer(part10=await self.ctx.client.retrieve_instance_transcoded(ref, hint))

    def subops(self) -> Generator[SubOperation, None, None]:
        retrieve = self.ctx.config.retrieve
        prefetcher: Prefetcher[InstanceRef, WadoAnswer] = Prefetcher(
            self.refs,
            self._fetch,
            WadoAnswer.size,
            max_concurrent=retrieve.max_concurrent_fetches,
            max_bytes=retrieve.max_buffer_bytes,
        )
        with PrefetchHandle(self.ctx.loop, prefetcher) as handle:
            for index, ref in enumerate(self.refs):
                fetched = handle.take(index, self.cancelled)
                try:
                    if fetched.error is not None:
                        outage = isinstance(fetched.error, DicomwebCircuitOpen)
                        yield SubOperation(ref, error=_reason(fetched.error), outage=outage)
                    else:
                        assert fetched.value is not None
                        yield self._prepare(ref, fetched.value)
                finally:
                    handle.release(index)

    def _prepare(self, ref: InstanceRef, fetched: WadoAnswer) -> SubOperation:
        if fetched.metadata is not None:
            return self._prepare_metadata(ref, fetched.metadata)
        payload = fetched.part10
        assert payload is not None
        if self.ctx.config.retrieve.fast_send:
            fast = self._prepare_encoded(ref, payload)
            if fast is not None:
                return fast
        try:
            ds = dcmread(BytesIO(payload))
            stored = str(ds.file_meta.TransferSyntaxUID)
            sop_class = str(ds.SOPClassUID)
        except Exception as exc:
            return SubOperation(ref, error=f"corrupt instance from WADO-RS: {exc}")
        if str(ds.SOPInstanceUID) != ref.sop_instance_uid:
            return SubOperation(ref, error="WADO-RS returned a different instance")
        accepted = self.accepted.get(sop_class, frozenset())
        if not accepted:
            return SubOperation(ref, error=no_context(sop_class))
        if is_sendable(stored, accepted):
            return SubOperation(ref, dataset=ds, size=len(payload))
        return self._convert(ref, ds, stored, sop_class, accepted, len(payload))

    def _convert(
        self,
        ref: InstanceRef,
        ds: Dataset,
        stored: str,
        sop_class: str,
        accepted: frozenset[str],
        size: int,
    ) -> SubOperation:
        """The instance in a syntax the peer accepted: the server's transcoding first, then
        a local lossless conversion; or why neither is possible (``cannot_send``)."""
        allow_lossy = self.ctx.config.retrieve.allow_lossy
        key = (ref.series_uid, sop_class)
        # Only what this server can transcode to (bridge/profiles.py): anything else is
        # converted here from the stored syntax.
        producible = self.ctx.dicomweb.capabilities.retrieve_syntaxes
        wanted = server_syntax(stored, accepted, allow_lossy, producible)
        if wanted is not None and self.hints.get(key) != _LOCAL:
            converted = self._server_copy(ref, stored, wanted, sop_class, accepted)
            if converted is not None:
                return converted
        target = local_syntax(accepted, local_encoders())
        if target is not None:
            try:
                subop = self._local_copy(ref, ds, stored, target, wanted)
            except ConversionError as exc:
                LOGGER.info(
                    "cannot convert %s from %s to %s here: %s",
                    ref.sop_instance_uid,
                    stored,
                    target,
                    exc,
                )
            else:
                self.hints[key] = _LOCAL
                return subop
        return SubOperation(ref, error=cannot_send(stored, accepted, allow_lossy), size=size)

    def _server_copy(
        self,
        ref: InstanceRef,
        stored: str,
        wanted: str,
        sop_class: str,
        accepted: frozenset[str],
    ) -> SubOperation | None:
        """The server's transcoding of the instance into `wanted`, or None when it cannot
        (HTTP 406/500, unreadable, or not what was asked)."""
        try:
            again = self.ctx.loop.call(
                self.ctx.client.retrieve_instance(ref, wanted), self.cancelled
            )
            converted = dcmread(BytesIO(again))
        except DicomwebError as exc:
            LOGGER.info("server could not transcode to %s (%s); trying locally", wanted, exc)
            return None
        except Cancelled:
            raise
        except Exception as exc:
            LOGGER.info("transcoded answer unreadable (%s); trying locally", exc)
            return None
        got = str(converted.file_meta.TransferSyntaxUID)
        if not is_sendable(got, accepted):
            return None
        if is_lossy_conversion(stored, got):
            if not self.ctx.config.retrieve.allow_lossy:
                LOGGER.warning("server answered lossy %s when asked for %s: not sent", got, wanted)
                return None
            # A new instance (PS3.3 C.7.6.1.1.5): not learned as a hint, so every instance
            # of the series is fetched as stored first and judged on its own.
            mark_lossy_copy(converted, ref.sop_instance_uid, sop_class)
            LOGGER.info(
                "sending %s as a lossy %s copy %s (retrieve.allow_lossy)",
                ref.sop_instance_uid,
                short_name(got),
                converted.SOPInstanceUID,
            )
            return SubOperation(ref, dataset=converted, size=len(again))
        if str(converted.SOPInstanceUID) != ref.sop_instance_uid:
            LOGGER.warning("server transcoding to %s changed the SOP Instance UID", wanted)
            return None
        self.hints[(ref.series_uid, sop_class)] = wanted
        return SubOperation(ref, dataset=converted, size=len(again))

    def _local_copy(
        self, ref: InstanceRef, ds: Dataset, stored: str, target: str, asked: str | None
    ) -> SubOperation:
        """A lossless local conversion into `target` (ConversionError when impossible). An
        instance pydicom cannot decode here (no plugin: JPEG Extended 12-bit, JPEG Lossless)
        is decompressed by the server first, unless that is what was just asked in vain."""
        if is_compressed(stored):
            try:
                if not can_decode(stored):
                    raise ConversionError(f"no decoder for {stored} here")
                decompress(ds)
            except ConversionError:
                producible = self.ctx.dicomweb.capabilities.retrieve_syntaxes
                if asked == ExplicitVRLittleEndian or not can_produce(
                    ExplicitVRLittleEndian, producible
                ):
                    raise
                ds = self._server_native(ref)
            stored = str(ds.file_meta.TransferSyntaxUID)
        if target == ExplicitVRLittleEndian and stored != ExplicitVRBigEndian:
            # Decompressed in place: sent without another encoding pass here.
            return SubOperation(ref, dataset=ds, size=len(ds.PixelData))
        part10 = convert(ds, target)
        exact = target in self.accepted.get(str(ds.SOPClassUID), frozenset())
        if self.ctx.config.retrieve.fast_send and exact:
            return SubOperation(ref, dataset=EncodedInstance(part10), size=len(part10))
        return SubOperation(ref, dataset=dcmread(BytesIO(part10)), size=len(part10))

    def _server_native(self, ref: InstanceRef) -> Dataset:
        """The instance decompressed by the server (Explicit VR LE), for a local encoder."""
        try:
            native = self.ctx.loop.call(
                self.ctx.client.retrieve_instance(ref, ExplicitVRLittleEndian), self.cancelled
            )
            ds = dcmread(BytesIO(native))
        except (DicomwebError, InvalidDicomError) as exc:
            raise ConversionError(f"the server cannot decompress it either: {exc}") from exc
        if str(ds.SOPInstanceUID) != ref.sop_instance_uid:
            raise ConversionError("server decompression changed the SOP Instance UID")
        return ds

    def _prepare_encoded(self, ref: InstanceRef, payload: bytes) -> SubOperation | None:
        """The fast path: the instance as WADO-RS sent it, when the peer takes its stored
        syntax exactly; None to use the decoding path."""
        try:
            instance = EncodedInstance(payload)
        except Part10Error:
            return None
        if str(instance.SOPInstanceUID) != ref.sop_instance_uid:
            return None
        accepted = self.accepted.get(str(instance.SOPClassUID), frozenset())
        if str(instance.transfer_syntax) not in accepted:
            return None
        return SubOperation(ref, dataset=instance, size=len(payload))

    def _prepare_metadata(self, ref: InstanceRef, metadata: dict[str, Any]) -> SubOperation:
        try:
            ds = metadata_dataset(metadata)
        except Exception as exc:
            return SubOperation(ref, error=f"unreadable WADO-RS metadata: {exc}")
        accepted = self.accepted.get(str(ds.SOPClassUID), frozenset())
        if not is_sendable(ExplicitVRLittleEndian, accepted):
            return SubOperation(ref, error="peer accepts no uncompressed syntax for the metadata")
        return SubOperation(ref, dataset=ds, size=0)


def _reason(error: BaseException) -> str:
    if isinstance(error, DicomwebCircuitOpen):
        return error.summary  # one text for all: counted once in the ErrorComment
    if isinstance(error, BridgeError):
        return describe(error)
    return f"{type(error).__name__}: {error}"
