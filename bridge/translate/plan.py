"""Query planning: one QIDO-RS search fitted to what one server can match (issue 11).

The C-FIND and retrieve translations (``query.py``, ``retrieve.py``) say what to ask in
PS3.18 terms, as if the server matched everything. :func:`plan_search` splits that into
the part the server's :class:`~bridge.profiles.Capabilities` say it can match, which is
sent, and the rest, which the bridge matches itself on the answers (PS3.4 C.2.2.2):

* a key the server cannot search at that resource, or a value form it does not take
  (``*``/``?`` wildcards, comma lists, ranges), is not sent; it is asked for with
  ``includefield`` (when the server returns it) and checked locally (:class:`ValueCheck`);
* a person name ``PREFIX*`` goes to a server with ``fuzzy_matching`` as
  ``fuzzymatching=true`` with the first word of the prefix (its prefix word match is a
  superset), and the exact pattern is checked locally;
* a UID list the server cannot take becomes one query per UID (a fan-out), and so does
  a list for a key it matches but does not return (ModalitiesInStudy on a server without
  ``modalities_in_study``: the C-FIND side computes that value from the study's series);
* levels the server cannot search from the root (``hierarchical_only``), and keys of a
  level above the resource that the server does not match there, become a walk:
  studies first, then each matching study's series, then each series' instances, with the
  parent's attributes merged into each child so that every check sees them.

Results are de-duplicated by the UID of each step's level. The plan never contains a key,
value form or ``includefield`` the capabilities exclude; ``limit``/``offset`` are the
DICOMweb client's business (its Pager reads the same capabilities). A plan that filters
locally is *broad*: the C-FIND side stops it with 0xA700 and a key to add when the rows
it must read exceed ``dicomweb.max_results``, rather than answer a truncated list.

This module is pure: QIDO-RS queries in, plans out; no HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag

from bridge.errors import QueryTooBroad
from bridge.models import QidoQuery, QidoResource, QueryLevel
from bridge.profiles import Capabilities
from bridge.translate.query import _element_values, _wildcard_regex, key_level

# The unique key of each level a QIDO-RS resource lists (PS3.4 C.6.2.1).
UID_KEYWORD: dict[QueryLevel, str] = {
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}
_UID_KEYWORDS = frozenset(UID_KEYWORD.values())
RESOURCE: dict[QueryLevel, QidoResource] = {
    QueryLevel.STUDY: QidoResource.STUDIES,
    QueryLevel.SERIES: QidoResource.SERIES,
    QueryLevel.IMAGE: QidoResource.INSTANCES,
}
_LEVEL_OF_RESOURCE = {resource: level for level, resource in RESOURCE.items()}
# Keys suggested in the ErrorComment of a query too broad to filter locally, in order of
# preference; the first the server matches at the first resource asked is named.
_SUGGESTED_KEYS = (
    "PatientID",
    "StudyDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
)
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
# ModalitiesInStudy as a query may name it (keyword or 8 hex digits).
_MODALITIES = frozenset({"ModalitiesInStudy", "00080061"})
# Longest UID list fanned out into one query per UID below a parent resource; a longer
# one lists the parent once and is matched locally.
FANOUT_MAX = 20


class Check(Protocol):
    """A matching rule the bridge applies to each QIDO-RS result."""

    def accepts(self, result: Dataset) -> bool: ...


@dataclass(frozen=True)
class ValueCheck:
    """A matching key the server was not sent, matched by the bridge (PS3.4 C.2.2.2).

    Unlike :class:`~bridge.translate.query.LocalCheck` (a re-check of what the server
    already matched), a result without the attribute does not match: the bridge asked
    for it, and a non-universal key never matches an empty value.
    """

    keyword: str
    value: str  # as it would have been sent: comma list, wildcards or a range
    vr: str

    @property
    def tag(self) -> BaseTag:
        return Tag(self.keyword) if tag_for_keyword(self.keyword) else Tag(int(self.keyword, 16))

    def accepts(self, result: Dataset) -> bool:
        if self.tag not in result:
            return False
        got = _element_values(result[self.tag])
        if not got:
            return False
        return any(_matches(pattern, value, self.vr) for pattern in self.patterns for value in got)

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(self.value.split(","))


def _matches(pattern: str, value: str, vr: str) -> bool:
    if vr in _RANGE_VRS and "-" in pattern:
        low, _, high = pattern.partition("-")
        value = value.strip()
        return (not low or value >= low) and (not high or value[: len(high)] <= high)
    if vr == "UI":
        return value.strip() == pattern
    flags = re.IGNORECASE if vr == "PN" else 0
    text = value if vr == "PN" else value.strip()
    return re.fullmatch(_wildcard_regex(pattern), text, flags) is not None


@dataclass(frozen=True)
class Step:
    """One level of a plan: the searches sent for it (several when a UID list is fanned
    out), and the checks the bridge applies to their results.

    In a walk, every step but the first is sent once per result of the step above, with
    that result's UIDs as the parents of each query (``/studies/{uid}/series``...).
    """

    level: QueryLevel
    queries: tuple[QidoQuery, ...]
    checks: tuple[Check, ...] = ()

    @property
    def uid_keyword(self) -> str:
        return UID_KEYWORD[self.level]


@dataclass(frozen=True)
class QueryPlan:
    """The searches one identifier becomes on one server, and what is matched locally."""

    steps: tuple[Step, ...]
    # Keys (or value forms) matched by the bridge rather than the server, for the
    # ErrorComment when the rows to filter exceed max_results.
    filtered: tuple[str, ...] = ()
    # A key the server matches at the first resource asked, to name in that ErrorComment.
    suggest: str = "PatientID"

    @property
    def queries(self) -> tuple[QidoQuery, ...]:
        """What is sent first (all of it, for a one-step plan)."""
        return self.steps[0].queries

    @property
    def broad(self) -> bool:
        """Whether the server returns rows the bridge then filters out (or walks through)."""
        return bool(self.filtered) or len(self.steps) > 1

    def too_broad(self, rows: int) -> QueryTooBroad:
        what = ", ".join(self.filtered) or "the level"
        return QueryTooBroad(f"{what} matched locally, >{rows} rows: add {self.suggest}")


@dataclass
class _Need:
    keyword: str
    name: str  # as it appears in the query (keyword or 8 hex digits)
    value: str
    level: QueryLevel


@dataclass
class _Fitted:
    match: list[tuple[str, str]] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    checks: list[Check] = field(default_factory=list)
    fanout: tuple[str, list[str]] | None = None
    fuzzy: bool = False
    filtered: list[str] = field(default_factory=list)
    # A key of a level above the resource that the server cannot match here.
    upper_dropped: bool = False


def plan_search(
    level: QueryLevel, query: QidoQuery, caps: Capabilities, *, extra_checks: Sequence[Check] = ()
) -> QueryPlan:
    """Fit `query` (listing results of `level`) to `caps`; QueryTooBroad if impossible.

    `extra_checks` apply to the final results (e.g. FindPlan's re-checks), whatever the
    plan's shape.
    """
    if level is QueryLevel.PATIENT:
        level = QueryLevel.STUDY
    if not caps.related_counts:
        query = without_counts(query)
    if not caps.modalities_in_study:
        # Not returned unless matched: the C-FIND side computes it (find.py).
        query = replace(
            query, includefield=tuple(n for n in query.includefield if n not in _MODALITIES)
        )
    needs = _needs(query, level)
    includes = [(name, _level_of(_keyword(name), level)) for name in query.includefield]
    if _flat_shape_ok(query, caps):
        parent = (
            QueryLevel.SERIES
            if query.series_uid is not None
            else QueryLevel.STUDY
            if query.study_uid is not None
            else None
        )
        fitted = _fit(query.resource, parent, needs, caps)
        if not fitted.upper_dropped:
            step = _step(level, query, fitted, [name for name, _ in includes], caps)
            return QueryPlan(
                steps=(replace(step, checks=step.checks + tuple(extra_checks)),),
                filtered=tuple(fitted.filtered),
                suggest=_suggest(query.resource, caps),
            )
    return _walk(level, query, needs, includes, caps, extra_checks)


def _walk(
    level: QueryLevel,
    query: QidoQuery,
    needs: list[_Need],
    includes: list[tuple[str, QueryLevel]],
    caps: Capabilities,
    extra_checks: Sequence[Check],
) -> QueryPlan:
    """Studies, then series, then instances: each level asked at its hierarchical resource."""
    known = {QueryLevel.STUDY: query.study_uid, QueryLevel.SERIES: query.series_uid}
    for lvl, uid in known.items():
        if uid is not None:
            needs.append(_Need(UID_KEYWORD[lvl], UID_KEYWORD[lvl], uid, lvl))
    start = level
    for lvl in (QueryLevel.SERIES, QueryLevel.STUDY):
        if lvl >= level:
            continue
        wanted = [n for n in needs if n.level is lvl and n.keyword != UID_KEYWORD[lvl]]
        wanted_includes = [
            name for name, at in includes if at is lvl and _keyword(name) not in _UID_KEYWORDS
        ]
        if wanted or wanted_includes or known[lvl] is None:
            start = lvl
    steps: list[Step] = []
    filtered: list[str] = []
    for lvl in QueryLevel:
        if lvl < start or lvl > level or lvl is QueryLevel.PATIENT:
            continue
        # A known parent above the walk's first step goes into the path; at or below it
        # the parent comes from each result of the step above.
        parent = None if lvl is QueryLevel.STUDY else QueryLevel(lvl - 1)
        at = [n for n in needs if n.level is lvl]
        fitted = _fit(RESOURCE[lvl], parent, at, caps)
        template = QidoQuery(resource=RESOURCE[lvl])
        if lvl is start:
            template = replace(
                template,
                study_uid=query.study_uid if lvl > QueryLevel.STUDY else None,
                series_uid=query.series_uid if lvl > QueryLevel.SERIES else None,
            )
        names = [name for name, inc_level in includes if inc_level is lvl]
        steps.append(_step(lvl, template, fitted, names, caps))
        filtered += fitted.filtered
    if not steps:
        raise QueryTooBroad(f"no QIDO-RS resource lists {level.name} here")
    last = steps[-1]
    steps[-1] = replace(last, checks=last.checks + tuple(extra_checks))
    return QueryPlan(
        steps=tuple(steps),
        filtered=tuple(filtered),
        suggest=_suggest(steps[0].queries[0].resource, caps),
    )


def _step(
    level: QueryLevel,
    template: QidoQuery,
    fitted: _Fitted,
    includes: Iterable[str],
    caps: Capabilities,
) -> Step:
    include = set(fitted.include)
    for name in includes:
        if _includable(name, caps):
            include.add(name)
    matched = {name for name, _ in fitted.match}
    if fitted.fanout is not None:
        matched.add(fitted.fanout[0])
    base = replace(
        template,
        match=tuple(sorted(fitted.match)),
        includefield=tuple(sorted(include - matched)),
        fuzzymatching=fitted.fuzzy,
    )
    if fitted.fanout is None:
        queries: tuple[QidoQuery, ...] = (base,)
    else:
        name, values = fitted.fanout
        queries = tuple(
            replace(base, match=tuple(sorted([*fitted.match, (name, value)])))
            for value in dict.fromkeys(values)
        )
    return Step(level=level, queries=queries, checks=tuple(fitted.checks))


def _fit(
    resource: QidoResource, parent: QueryLevel | None, needs: Sequence[_Need], caps: Capabilities
) -> _Fitted:
    """Decide, key by key, what is sent at `resource` and what is matched locally."""
    fitted = _Fitted()
    level = _LEVEL_OF_RESOURCE[resource]
    for need in needs:
        vr = _vr(need.keyword)
        form = _form(need.value, vr)
        key_ok = _searchable(need.keyword, need.level, resource, parent, caps)
        if key_ok and _form_ok(form, vr, caps):
            fitted.match.append((need.name, need.value))
            continue
        values = need.value.split(",")
        if key_ok and form == "list" and vr == "UI" and fitted.fanout is None:
            # One query per UID; but a long list below a parent (the instances of a series)
            # costs fewer requests as that one listing, filtered here.
            if parent is None or len(values) <= FANOUT_MAX:
                fitted.fanout = (need.name, values)
                continue
        if key_ok and form == "list" and not _returned(need.name, caps) and fitted.fanout is None:
            # "Any of" a key the server matches but does not return (so the bridge could
            # not match it on the answers): one query per value, the union de-duplicated.
            fitted.fanout = (need.name, values)
            continue
        fuzzy = _fuzzy_prefix(need.value, vr) if caps.fuzzy_matching else None
        if key_ok and form == "wild" and fuzzy:
            fitted.match.append((need.name, fuzzy))
            fitted.fuzzy = True
            fitted.checks.append(ValueCheck(need.keyword, need.value, vr))
            fitted.filtered.append(need.keyword)
            continue
        # Matched locally: the server must return it.
        if need.level < level:
            fitted.upper_dropped = True
        if need.keyword in _UID_KEYWORDS:
            pass  # every result carries its UIDs
        elif _includable(need.name, caps) and _returned(need.name, caps):
            fitted.include.add(need.name)
        else:
            raise QueryTooBroad(f"server can neither match nor return {need.keyword}")
        fitted.checks.append(ValueCheck(need.keyword, need.value, vr))
        fitted.filtered.append(need.keyword)
    return fitted


def _searchable(
    keyword: str,
    at: QueryLevel,
    resource: QidoResource,
    parent: QueryLevel | None,
    caps: Capabilities,
) -> bool:
    keys = {
        QidoResource.STUDIES: caps.study_search_keys,
        QidoResource.SERIES: caps.series_search_keys,
        QidoResource.INSTANCES: caps.instance_search_keys,
    }[resource]
    if keys is None:
        return True
    if parent is not None and at <= parent:
        # Below a parent in the path (/studies/{uid}/series), a server that lists its
        # search keys matches only the resource's own level there (Azure's table).
        return False
    return keyword in keys


def _form(value: str, vr: str) -> str:
    if "," in value:
        return "list"
    if vr in _RANGE_VRS and "-" in value:
        return "range"
    if vr != "UI" and ("*" in value or "?" in value):
        return "wild"
    return "single"


def _form_ok(form: str, vr: str, caps: Capabilities) -> bool:
    if form == "list":
        return caps.uid_lists if vr == "UI" else caps.value_lists
    if form == "range":
        return caps.ranges
    if form == "wild":
        return caps.wildcards
    return True


def _fuzzy_prefix(value: str, vr: str) -> str | None:
    """The word to send with fuzzymatching=true for a person name ``PREFIX*``, or None.

    Fuzzy matching is a prefix match of any word of the name (Azure, Google): the
    first word of the prefix matches a superset of ``PREFIX*``.
    """
    if vr != "PN" or not value.endswith("*") or "?" in value or "*" in value[:-1]:
        return None
    word = value[:-1].replace("^", " ").split(" ")[0].strip()
    return word or None


def _includable(name: str, caps: Capabilities) -> bool:
    if caps.includefield_keys is None:
        return True
    return name in caps.includefield_keys or _keyword(name) in caps.includefield_keys


def _returned(name: str, caps: Capabilities) -> bool:
    """Whether the server's answers carry `name` when it is not a match key."""
    return caps.modalities_in_study or name not in _MODALITIES


def _flat_shape_ok(query: QidoQuery, caps: Capabilities) -> bool:
    """Whether the server has the resource `query` targets (hierarchical ones only?)."""
    if not caps.hierarchical_only:
        return True
    has_study, has_series = query.study_uid is not None, query.series_uid is not None
    return {
        QidoResource.STUDIES: not has_study and not has_series,
        QidoResource.SERIES: has_study and not has_series,
        QidoResource.INSTANCES: has_study and has_series,
    }[query.resource]


def _needs(query: QidoQuery, level: QueryLevel) -> list[_Need]:
    needs = []
    for name, value in query.match:
        keyword = _keyword(name)
        needs.append(_Need(keyword, name, value, _level_of(keyword, level)))
    return needs


def _level_of(keyword: str, level: QueryLevel) -> QueryLevel:
    at = key_level(keyword, level)
    return max(QueryLevel.STUDY, min(at, level))


def _keyword(name: str) -> str:
    if tag_for_keyword(name) is not None:
        return name
    try:
        return keyword_for_tag(int(name, 16)) or name
    except ValueError:
        return name


def _vr(keyword: str) -> str:
    try:
        return str(dictionary_VR(keyword if tag_for_keyword(keyword) else int(keyword, 16)))
    except (KeyError, ValueError):
        return "UN"


def _suggest(resource: QidoResource, caps: Capabilities) -> str:
    keys = {
        QidoResource.STUDIES: caps.study_search_keys,
        QidoResource.SERIES: caps.series_search_keys,
        QidoResource.INSTANCES: caps.instance_search_keys,
    }[resource]
    for keyword in _SUGGESTED_KEYS:
        if keys is None or keyword in keys:
            return keyword
    return "a key the server matches"


def child_query(template: QidoQuery, study_uid: str | None, series_uid: str | None) -> QidoQuery:
    """A walk step's query below one result of the step above (its UIDs as the path)."""
    return replace(
        template,
        study_uid=study_uid or template.study_uid,
        series_uid=series_uid or template.series_uid,
    )


# --------------------------------------------------------------------------- counts

# Counts a C-FIND may ask for that a server without related_counts does not return,
# by the level they are counted at.
STUDY_COUNTS = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_COUNTS = ("NumberOfSeriesRelatedInstances",)
COUNT_KEYWORDS = frozenset(
    {
        *STUDY_COUNTS,
        *SERIES_COUNTS,
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    }
)
_COUNT_NAMES = frozenset({*COUNT_KEYWORDS, *(f"{tag_for_keyword(k):08X}" for k in COUNT_KEYWORDS)})


def without_counts(query: QidoQuery) -> QidoQuery:
    """`query` without the NumberOf*Related* includefields (a server that does not
    return them may refuse them)."""
    return replace(
        query, includefield=tuple(n for n in query.includefield if n not in _COUNT_NAMES)
    )


def series_of(study_uid: str, *, modalities: bool = False) -> QidoQuery:
    """The hierarchical listing of a study's series (for counting), with each series'
    Modality when `modalities` (to compute ModalitiesInStudy)."""
    include = ("Modality",) if modalities else ()
    return QidoQuery(resource=QidoResource.SERIES, study_uid=study_uid, includefield=include)


def instances_of(study_uid: str, series_uid: str) -> QidoQuery:
    """The hierarchical listing of a series' instances (for counting)."""
    return QidoQuery(resource=QidoResource.INSTANCES, study_uid=study_uid, series_uid=series_uid)
