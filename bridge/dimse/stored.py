"""Where the bridge stored each recent instance: SOP Instance UID → (study, series) UIDs.

Storage commitment asks whether instances are held. A server with hierarchical QIDO-RS
only (AWS HealthImaging) cannot search a SOP Instance UID at the root: it must be asked
``/studies/{study}/series/{series}/instances``. The C-STORE path records the study and
series of every instance it stored here, so that commitment can ask that; an instance
the bridge did not store (or stored so long ago that it has left this bounded map) is
walked for through studies and series instead (bounded by ``dicomweb.max_results``
studies; see ``commitment.present_instances``), and reported as not committed if not
found, which is safe: the modality keeps its copy (PS3.4 J.3.3).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from pydicom import dcmread

# About 200 bytes an entry: a bounded map of the most recent instances.
DEFAULT_CAPACITY = 100_000


class StoredIndex:
    """A bounded, thread-safe map of recently stored instances (oldest forgotten first)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, sop_instance_uid: str, study_uid: str, series_uid: str) -> None:
        with self._lock:
            self._entries[sop_instance_uid] = (study_uid, series_uid)
            self._entries.move_to_end(sop_instance_uid)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def remember_file(self, sop_instance_uid: str, path: Path) -> None:
        """Record the study and series of a stored Part 10 file (read from its header)."""
        ds = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
        )
        study, series = ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID")
        if study and series:
            self.remember(sop_instance_uid, str(study), str(series))

    def locate(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(study UID, series UID) of an instance the bridge stored, if it still knows."""
        with self._lock:
            return self._entries.get(sop_instance_uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
