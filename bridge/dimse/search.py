"""Runs a query plan (bridge/translate/plan.py) on the backend: fan-out, walk, de-duplication,
local matching and the budget of rows a broad plan may read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydicom import Dataset

from bridge.dimse.context import BridgeContext
from bridge.errors import DicomwebProtocolError
from bridge.models import QidoQuery, QueryLevel
from bridge.translate.plan import QueryPlan, child_query, instances_of, series_of

Row = dict[str, Any]
_UID_TAGS = {
    QueryLevel.STUDY: "0020000D",
    QueryLevel.SERIES: "0020000E",
    QueryLevel.IMAGE: "00080018",
}


def decode(row: Row) -> Dataset:
    """One DICOM JSON result as a Dataset; DicomwebProtocolError when it is not one."""
    try:
        return Dataset.from_json(dict(row))
    except Exception as exc:
        raise DicomwebProtocolError(f"bad DICOM JSON in QIDO-RS answer: {exc}") from exc


class PlanRun:
    """The final-level results of one plan, each a DICOM JSON object with the attributes of
    its parents merged in, as the pages arrive.

    `budget` (0 = none) caps the rows a broad plan may read from the server, all steps
    together: past it the run raises the plan's QueryTooBroad (0xA700, naming a key to
    add) rather than return an answer filtered from a part of the data.
    """

    def __init__(
        self,
        plan: QueryPlan,
        ctx: BridgeContext,
        cancelled: Callable[[], bool] | None = None,
        *,
        budget: int = 0,
    ) -> None:
        self.plan = plan
        self.ctx = ctx
        self.cancelled = cancelled
        self.budget = budget if plan.broad else 0
        self.rows = 0

    def results(self) -> Iterator[Row]:
        yield from self._step(0, None, QueryLevel.STUDY)

    def _step(self, index: int, parent: Row | None, parent_level: QueryLevel) -> Iterator[Row]:
        step = self.plan.steps[index]
        last = index + 1 == len(self.plan.steps)
        seen: set[str] = set()
        uid_tag = _UID_TAGS[step.level]
        for template in step.queries:
            query = template
            if parent is not None:
                series = _first(parent, "0020000E") if parent_level >= QueryLevel.SERIES else None
                query = child_query(template, _first(parent, "0020000D"), series)
            for page in self.ctx.search_pages(query, self.cancelled):
                for row in page.results:
                    self.rows += 1
                    if self.budget and self.rows > self.budget:
                        raise self.plan.too_broad(self.budget)
                    uid = _first(row, uid_tag)
                    if uid is not None:
                        if uid in seen:
                            continue  # fan-out overlap, or a row repeated between pages
                        seen.add(uid)
                    row = _merged(row, parent, query)
                    if step.checks:
                        ds = decode(row)
                        if not all(check.accepts(ds) for check in step.checks):
                            continue
                    if last:
                        yield row
                    else:
                        yield from self._step(index + 1, row, step.level)


def _first(row: Row, tag: str) -> str | None:
    element = row.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]) if isinstance(values, list) and values else None


def _merged(row: Row, parent: Row | None, query: QidoQuery) -> Row:
    """`row` with its query path's UIDs and its parent's attributes where it lacks them
    (hierarchical answers need not repeat either)."""
    if query.study_uid is not None:
        row.setdefault("0020000D", {"vr": "UI", "Value": [query.study_uid]})
    if query.series_uid is not None:
        row.setdefault("0020000E", {"vr": "UI", "Value": [query.series_uid]})
    if parent is not None:
        for tag, element in parent.items():
            row.setdefault(tag, element)
    return row


def count_rows(
    ctx: BridgeContext, query: QidoQuery, cancelled: Callable[[], bool] | None = None
) -> list[Row]:
    """Every row of one (hierarchical) listing, de-duplicated by the client's Pager."""
    rows: list[Row] = []
    for page in ctx.search_pages(query, cancelled):
        rows.extend(page.results)
    return rows


def study_series(
    ctx: BridgeContext,
    study_uid: str,
    cancelled: Callable[[], bool] | None = None,
    *,
    modalities: bool = False,
) -> list[Row]:
    """Every series of a study (a hierarchical search), with Modality when `modalities`."""
    return count_rows(ctx, series_of(study_uid, modalities=modalities), cancelled)


def study_counts(
    ctx: BridgeContext,
    study_uid: str,
    cancelled: Callable[[], bool] | None = None,
    *,
    instances: bool = True,
    rows: list[Row] | None = None,
) -> tuple[int, int]:
    """(series, instances) of a study, counted from hierarchical series and instance
    searches, for servers that do not return the NumberOfStudyRelated* counts. `rows`:
    the study's series if already listed (study_series)."""
    if rows is None:
        rows = study_series(ctx, study_uid, cancelled)
    series = [uid for row in rows if (uid := _first(row, "0020000E")) is not None]
    total = 0
    if instances:
        for series_uid in series:
            total += len(count_rows(ctx, instances_of(study_uid, series_uid), cancelled))
    return len(series), total


def study_modalities(rows: list[Row]) -> list[str]:
    """ModalitiesInStudy computed from a study's series (study_series with modalities):
    the distinct Modality values, sorted."""
    found: set[str] = set()
    for row in rows:
        element = row.get("00080060")
        values = element.get("Value") if isinstance(element, dict) else None
        if isinstance(values, list):
            found.update(str(v).strip() for v in values if str(v).strip())
    return sorted(found)


def series_count(
    ctx: BridgeContext, study_uid: str, series_uid: str, cancelled: Callable[[], bool] | None = None
) -> int:
    """The instances of a series, counted from a hierarchical instance search."""
    return len(count_rows(ctx, instances_of(study_uid, series_uid), cancelled))
