"""Sub-operation outcomes of one retrieve: counts, the failed list, and the final status
and ErrorComment they add up to. (The summary line is bridge/dimse/trace.py's, written
when the final response goes out.)"""


from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pydicom import Dataset

from bridge.models import InstanceRef
from bridge.translate.status import (
    OUT_OF_RESOURCES_SUBOPS,
    STORE_RESPONSE_WARNINGS,
    SUCCESS,
    WARNING_SUBOPS,
)


@dataclass
class Tally:
    """Sub-operation outcomes of one retrieve, and the final status they add up to."""

    total: int
    completed: int = 0
    warnings: int = 0
    failed: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    # Why sub-operations failed, most frequent first in the final ErrorComment: the
    # Failed SOP Instance UID List says which, this says why.
    reasons: Counter[str] = field(default_factory=Counter)

    def record_store(self, ref: InstanceRef, status: int | None, size: int) -> None:
        if status == SUCCESS:
            self.completed += 1
            self.bytes_sent += size
        elif status in STORE_RESPONSE_WARNINGS:
            self.warnings += 1
            self.bytes_sent += size
        elif status is None:
            self.record_failure(ref.sop_instance_uid, "no C-STORE response from the peer")
        else:
            self.record_failure(ref.sop_instance_uid, f"peer answered C-STORE 0x{status:04X}")

    def record_failure(self, sop_instance_uid: str, reason: str) -> None:
        self.failed.append(sop_instance_uid)
        self.reasons[reason] += 1

    def record_failures(self, sop_instance_uids: list[str], reason: str) -> None:
        self.failed.extend(sop_instance_uids)
        if sop_instance_uids:
            self.reasons[reason] += len(sop_instance_uids)

    def comment(self) -> str | None:
        """ErrorComment material: the failure reasons with their counts, most frequent
        first ("3 failed: <reason>; 1: <reason>"); None when nothing failed."""
        if not self.reasons:
            return None
        ranked = self.reasons.most_common()
        (first, n), rest = ranked[0], ranked[1:]
        parts = [f"{n} failed: {first}"] + [f"{m}: {reason}" for reason, m in rest]
        return "; ".join(parts)

    def final_status(self) -> int:
        if not self.failed and not self.warnings:
            return SUCCESS
        if self.completed + self.warnings == 0:
            return OUT_OF_RESOURCES_SUBOPS
        return WARNING_SUBOPS


def failed_list(uids: list[str]) -> Dataset:
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = uids
    return ds
