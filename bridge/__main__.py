"""Allow ``python -m bridge`` as an alias of the ``dimse-bridge`` command."""

from __future__ import annotations

from bridge.cli import main

raise SystemExit(main())
