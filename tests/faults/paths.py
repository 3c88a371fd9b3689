"""Which request a path the fault proxy saw is: WADO-RS instance or QIDO-RS search."""

from __future__ import annotations

import re
from collections.abc import Callable

_WADO_INSTANCE = re.compile(r"^/dicom-web/studies/[0-9.]+/series/[0-9.]+/instances/[0-9.]+$")
_QIDO_INSTANCES = re.compile(r"^/dicom-web/studies/[0-9.]+/instances(\?|$)")
_QIDO_STUDIES = re.compile(r"^/dicom-web/studies(\?|$)")


def is_wado(path: str) -> bool:
    """A WADO-RS instance request: ``/studies/<s>/series/<se>/instances/<i>``, no query."""
    return bool(_WADO_INSTANCE.match(path))


def is_qido(path: str) -> bool:
    """The bridge's QIDO-RS instance search of a retrieve: ``/studies/<s>/instances?...``."""
    return bool(_QIDO_INSTANCES.match(path))


def is_qido_studies(path: str) -> bool:
    """The QIDO-RS search a STUDY-level C-FIND sends: ``/studies?...``."""
    return bool(_QIDO_STUDIES.match(path))


def wado_path_of(uid: str) -> Callable[[str], bool]:
    """A path filter matching the WADO-RS request of one instance."""
    return lambda path: is_wado(path) and path.endswith(f"/instances/{uid}")
