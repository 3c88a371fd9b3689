"""Unit tests for bridge.translate.retrieve: C-GET/C-MOVE identifiers → the QIDO-RS listing."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom import Dataset

from bridge.errors import InvalidIdentifier
from bridge.models import InformationModel, QidoQuery, QidoResource, QueryLevel
from bridge.translate.retrieve import INSTANCE_FIELDS, build_retrieve_plan

PATIENT_ROOT = InformationModel.PATIENT_ROOT
STUDY_ROOT = InformationModel.STUDY_ROOT
COMPOSITE = InformationModel.COMPOSITE_INSTANCE_ROOT
STUDY = "1.2.840.1"
SERIES = "1.2.840.1.2"
SOP = "1.2.840.1.2.3"
SOP2 = "1.2.840.1.2.4"


def ident(level: str, *file_meta: tuple[int, str], **keys: Any) -> Dataset:
    """A retrieve identifier; `file_meta` adds (0002,eeee) UI elements to it."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    for element, value in file_meta:
        ds.add_new((0x0002, element), "UI", value)
    return ds


def query(study: str | None = None, series: str | None = None, **match: str) -> QidoQuery:
    return QidoQuery(
        resource=QidoResource.INSTANCES,
        study_uid=study,
        series_uid=series,
        match=tuple(sorted(match.items())),
        includefield=tuple(sorted(set(INSTANCE_FIELDS) - set(match))),
    )


MEDIA_SOP_INSTANCE = (0x0003, SOP)
MEDIA_SOP_CLASS = (0x0002, "1.2.840.10008.5.1.4.1.1.2")
TRANSFER_SYNTAX = (0x0010, "1.2.840.10008.1.2.1")

# (identifier, model) → (level, model served, QIDO-RS query)
ACCEPTED = [
    pytest.param(
        ident(
            "IMAGE",
            MEDIA_SOP_INSTANCE,
            StudyInstanceUID=STUDY,
            SeriesInstanceUID=SERIES,
            SOPInstanceUID=SOP,
        ),
        STUDY_ROOT,
        (QueryLevel.IMAGE, STUDY_ROOT, query(STUDY, SERIES, SOPInstanceUID=SOP)),
        id="orthanc-image-move-with-media-storage-uid",
    ),
    pytest.param(
        ident(
            "IMAGE",
            MEDIA_SOP_INSTANCE,
            MEDIA_SOP_CLASS,
            TRANSFER_SYNTAX,
            SOPInstanceUID=[SOP, SOP2],
        ),
        STUDY_ROOT,
        (QueryLevel.IMAGE, STUDY_ROOT, query(SOPInstanceUID=f"{SOP},{SOP2}")),
        id="any-file-meta-element-ignored",
    ),
    pytest.param(
        ident(
            "IMAGE",
            MEDIA_SOP_INSTANCE,
            PatientID="P1",
            StudyInstanceUID=STUDY,
            SeriesInstanceUID=SERIES,
            SOPInstanceUID=SOP,
        ),
        PATIENT_ROOT,
        (QueryLevel.IMAGE, PATIENT_ROOT, query(STUDY, SERIES, SOPInstanceUID=SOP)),
        id="patient-root-image-with-file-meta",
    ),
    pytest.param(
        ident("IMAGE", MEDIA_SOP_INSTANCE, SOPInstanceUID=SOP),
        COMPOSITE,
        (QueryLevel.IMAGE, COMPOSITE, query(SOPInstanceUID=SOP)),
        id="composite-instance-root-with-file-meta",
    ),
    pytest.param(
        ident("PATIENT", PatientID="P1"),
        STUDY_ROOT,
        (QueryLevel.PATIENT, PATIENT_ROOT, query(PatientID="P1")),
        id="orthanc-patient-level-on-study-root",
    ),
    pytest.param(
        ident("PATIENT", PatientID="P1"),
        PATIENT_ROOT,
        (QueryLevel.PATIENT, PATIENT_ROOT, query(PatientID="P1")),
        id="patient-level-on-patient-root",
    ),
    pytest.param(
        ident("STUDY", StudyInstanceUID=STUDY),
        STUDY_ROOT,
        (QueryLevel.STUDY, STUDY_ROOT, query(STUDY)),
        id="study-level-unchanged",
    ),
]


@pytest.mark.parametrize(("identifier", "model", "expected"), ACCEPTED)
def test_accepted_identifiers(
    identifier: Dataset,
    model: InformationModel,
    expected: tuple[QueryLevel, InformationModel, QidoQuery],
) -> None:
    plan = build_retrieve_plan(identifier, model)
    assert (plan.level, plan.model, plan.query) == expected
    assert plan.frames is None


# (identifier, model) → words the ErrorComment must hold
REFUSED = [
    pytest.param(
        ident("PATIENT", PatientID="P1", PatientName="DOE^J"),
        STUDY_ROOT,
        "PatientName is not a unique key of a PATIENT-level retrieve",
        id="patient-level-on-study-root-non-unique-key",
    ),
    pytest.param(
        ident("PATIENT", MEDIA_SOP_INSTANCE),
        STUDY_ROOT,
        "PatientID is required for a PATIENT-level retrieve",
        id="patient-level-on-study-root-without-patient-id",
    ),
    pytest.param(
        ident("PATIENT", PatientID="P*"),
        STUDY_ROOT,
        "PatientID must not use wildcards",
        id="patient-level-on-study-root-wildcard",
    ),
    pytest.param(
        ident("PATIENT", PatientID="P1"),
        COMPOSITE,
        "QueryRetrieveLevel PATIENT exists only in the Patient Root model",
        id="patient-level-on-composite-instance-root",
    ),
    pytest.param(
        ident("IMAGE", MEDIA_SOP_INSTANCE),
        STUDY_ROOT,
        "SOPInstanceUID is required for a IMAGE-level retrieve",
        id="file-meta-is-no-substitute-for-the-unique-key",
    ),
    pytest.param(
        ident("IMAGE", MEDIA_SOP_INSTANCE, SOPInstanceUID=SOP, Modality="CT"),
        STUDY_ROOT,
        "Modality is not a unique key of a IMAGE-level retrieve",
        id="file-meta-ignored-other-keys-still-checked",
    ),
]


@pytest.mark.parametrize(("identifier", "model", "comment"), REFUSED)
def test_refused_identifiers(identifier: Dataset, model: InformationModel, comment: str) -> None:
    with pytest.raises(InvalidIdentifier) as raised:
        build_retrieve_plan(identifier, model)
    assert comment in str(raised.value)
