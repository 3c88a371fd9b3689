"""dimse-bridge: a DIMSE front (C-ECHO, C-FIND, C-GET, ...) for DICOMweb servers."""

from __future__ import annotations

__version__ = "0.1.0"
