"""Unit tests for bridge.translate.query: C-FIND identifiers ↔ QIDO-RS queries and answers."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import decode, encode

from bridge.errors import InvalidIdentifier
from bridge.models import InformationModel, QidoQuery, QidoResource, QueryLevel
from bridge.translate.query import (
    UTF8_CHARSET,
    add_patient_counts,
    build_find_plan,
    check_keys,
    json_to_dataset,
    parse_level,
    patient_identity,
    result_to_identifier,
)

STUDY_ROOT = InformationModel.STUDY_ROOT
PATIENT_ROOT = InformationModel.PATIENT_ROOT


def ident(level: str | None, **keys: Any) -> Dataset:
    """An identifier with QueryRetrieveLevel and the given keys (values as pydicom takes them)."""
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def wire(ds: Dataset) -> Dataset:
    """`ds` after an encode/decode round trip, as a handler receives it from pynetdicom."""
    data = encode(ds, False, True)
    assert data is not None
    return decode(BytesIO(data), False, True)


# --- levels and resources -------------------------------------------------------------

RESOURCES = [
    pytest.param(
        STUDY_ROOT,
        ident("STUDY", StudyInstanceUID=""),
        QidoQuery(QidoResource.STUDIES, includefield=("StudyInstanceUID",)),
        "/studies",
        id="study-root-study",
    ),
    pytest.param(
        STUDY_ROOT,
        ident("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID=""),
        QidoQuery(QidoResource.SERIES, study_uid="1.2", includefield=("SeriesInstanceUID",)),
        "/studies/1.2/series",
        id="study-root-series-in-study",
    ),
    pytest.param(
        STUDY_ROOT,
        ident("SERIES", Modality="CT", SeriesInstanceUID=""),
        QidoQuery(
            QidoResource.SERIES, match=(("Modality", "CT"),), includefield=("SeriesInstanceUID",)
        ),
        "/series",
        id="study-root-series-all",
    ),
    pytest.param(
        STUDY_ROOT,
        ident("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.3", SOPInstanceUID=""),
        QidoQuery(
            QidoResource.INSTANCES,
            study_uid="1.2",
            series_uid="1.3",
            includefield=("SOPInstanceUID",),
        ),
        "/studies/1.2/series/1.3/instances",
        id="study-root-image-in-series",
    ),
    pytest.param(
        STUDY_ROOT,
        ident("IMAGE", StudyInstanceUID="1.2", SOPInstanceUID=""),
        QidoQuery(QidoResource.INSTANCES, study_uid="1.2", includefield=("SOPInstanceUID",)),
        "/studies/1.2/instances",
        id="study-root-image-in-study",
    ),
    pytest.param(
        STUDY_ROOT,
        ident("IMAGE", SOPInstanceUID=""),
        QidoQuery(QidoResource.INSTANCES, includefield=("SOPInstanceUID",)),
        "/instances",
        id="study-root-image-all",
    ),
    pytest.param(
        STUDY_ROOT,
        ident("IMAGE", SeriesInstanceUID="1.3", SOPInstanceUID=""),
        QidoQuery(
            QidoResource.INSTANCES,
            match=(("SeriesInstanceUID", "1.3"),),
            includefield=("SOPInstanceUID",),
        ),
        "/instances",
        id="study-root-image-series-without-study",
    ),
    pytest.param(
        PATIENT_ROOT,
        ident("PATIENT", PatientID="", PatientName=""),
        QidoQuery(
            QidoResource.STUDIES,
            includefield=(
                "NumberOfStudyRelatedInstances",
                "NumberOfStudyRelatedSeries",
                "PatientID",
                "PatientName",
            ),
        ),
        "/studies",
        id="patient-root-patient",
    ),
    pytest.param(
        PATIENT_ROOT,
        ident("STUDY", PatientID="P1", StudyInstanceUID=""),
        QidoQuery(
            QidoResource.STUDIES,
            match=(("PatientID", "P1"),),
            includefield=("StudyInstanceUID",),
        ),
        "/studies",
        id="patient-root-study",
    ),
    pytest.param(
        PATIENT_ROOT,
        ident("SERIES", PatientID="P1", StudyInstanceUID="1.2", SeriesInstanceUID=""),
        QidoQuery(
            QidoResource.SERIES,
            study_uid="1.2",
            match=(("PatientID", "P1"),),
            includefield=("SeriesInstanceUID",),
        ),
        "/studies/1.2/series",
        id="patient-root-series",
    ),
    pytest.param(
        PATIENT_ROOT,
        ident(
            "IMAGE",
            PatientID="P1",
            StudyInstanceUID="1.2",
            SeriesInstanceUID="1.3",
            SOPInstanceUID="",
        ),
        QidoQuery(
            QidoResource.INSTANCES,
            study_uid="1.2",
            series_uid="1.3",
            match=(("PatientID", "P1"),),
            includefield=("SOPInstanceUID",),
        ),
        "/studies/1.2/series/1.3/instances",
        id="patient-root-image",
    ),
]


@pytest.mark.parametrize(("model", "identifier", "expected", "path"), RESOURCES)
def test_level_maps_to_resource_and_path(
    model: InformationModel, identifier: Dataset, expected: QidoQuery, path: str
) -> None:
    plan = build_find_plan(identifier, model)
    assert plan.query == expected
    assert plan.query.path() == path
    assert plan.model is model
    assert plan.level is QueryLevel[str(identifier.QueryRetrieveLevel)]


def test_study_uid_at_study_level_is_a_match_not_a_path() -> None:
    plan = build_find_plan(ident("STUDY", StudyInstanceUID="1.2"), STUDY_ROOT)
    assert plan.query == QidoQuery(QidoResource.STUDIES, match=(("StudyInstanceUID", "1.2"),))
    assert plan.query.path() == "/studies"


def test_series_uid_at_series_level_is_a_match() -> None:
    plan = build_find_plan(
        ident("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID="1.3"), STUDY_ROOT
    )
    assert plan.query == QidoQuery(
        QidoResource.SERIES, study_uid="1.2", match=(("SeriesInstanceUID", "1.3"),)
    )
    assert plan.query.path() == "/studies/1.2/series"


def test_identifier_as_received_from_the_wire() -> None:
    sent = ident(
        "STUDY",
        PatientName="DOE^J*",
        PatientID="",
        StudyDate="20240101-20240131",
        ModalitiesInStudy="CT\\MR",
        StudyInstanceUID="",
    )
    plan = build_find_plan(wire(sent), STUDY_ROOT)
    assert plan.query == QidoQuery(
        QidoResource.STUDIES,
        match=(
            ("ModalitiesInStudy", "CT,MR"),
            ("PatientName", "DOE^J*"),
            ("StudyDate", "20240101-20240131"),
        ),
        includefield=("PatientID", "StudyInstanceUID"),
    )


# --- matching -------------------------------------------------------------------------


def test_universal_matching_becomes_includefield() -> None:
    plan = build_find_plan(
        ident("STUDY", PatientName="", StudyDate="", AccessionNumber=None), STUDY_ROOT
    )
    assert plan.query.match == ()
    assert plan.query.includefield == ("AccessionNumber", "PatientName", "StudyDate")
    assert plan.exact == ()


@pytest.mark.parametrize("value", ["*", " * "])
def test_star_alone_is_universal(value: str) -> None:
    plan = build_find_plan(ident("STUDY", AccessionNumber=value), STUDY_ROOT)
    assert plan.query.match == ()
    assert plan.query.includefield == ("AccessionNumber",)


def test_star_alone_in_person_name_is_universal() -> None:
    plan = build_find_plan(ident("STUDY", PatientName="*"), STUDY_ROOT)
    assert plan.query.match == ()
    assert plan.query.includefield == ("PatientName",)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientName", "DOE^J*"),
        ("PatientName", "DOE^J?HN"),
        ("PatientID", "12?4"),
        ("StudyDescription", "*HEAD*"),
    ],
)
def test_wildcards_pass_through_and_are_not_exact(keyword: str, value: str) -> None:
    plan = build_find_plan(ident("STUDY", **{keyword: value}), STUDY_ROOT)
    assert plan.query.match == ((keyword, value),)
    assert plan.query.includefield == ()
    assert plan.exact == ()


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDate", "20240101-"),
        ("StudyDate", "-20240131"),
        ("StudyDate", "20240101-20240131"),
        ("StudyTime", "080000-120000"),
    ],
)
def test_ranges_pass_through_and_are_not_exact(keyword: str, value: str) -> None:
    plan = build_find_plan(ident("STUDY", **{keyword: value}), STUDY_ROOT)
    assert plan.query.match == ((keyword, value),)
    assert plan.exact == ()


def test_single_date_is_exact() -> None:
    plan = build_find_plan(ident("STUDY", StudyDate="20240115"), STUDY_ROOT)
    assert plan.query.match == (("StudyDate", "20240115"),)
    assert plan.exact == ((Tag("StudyDate"), "20240115"),)


def test_uid_list_becomes_comma_list() -> None:
    plan = build_find_plan(ident("STUDY", StudyInstanceUID="1.2\\1.3"), STUDY_ROOT)
    assert plan.query.match == (("StudyInstanceUID", "1.2,1.3"),)
    assert plan.exact == ()


def test_uid_list_at_series_level_stays_a_match() -> None:
    plan = build_find_plan(
        ident("SERIES", StudyInstanceUID="1.2\\1.3", SeriesInstanceUID=""), STUDY_ROOT
    )
    assert plan.query == QidoQuery(
        QidoResource.SERIES,
        match=(("StudyInstanceUID", "1.2,1.3"),),
        includefield=("SeriesInstanceUID",),
    )
    assert plan.query.path() == "/series"


def test_modalities_in_study_list() -> None:
    plan = build_find_plan(ident("STUDY", ModalitiesInStudy="CT\\MR"), STUDY_ROOT)
    assert plan.query.match == (("ModalitiesInStudy", "CT,MR"),)
    assert plan.exact == ()


def test_sequence_key_is_only_included() -> None:
    item = Dataset()
    item.CodeValue = "CTHEAD"
    plan = build_find_plan(
        ident("STUDY", ProcedureCodeSequence=[item], ReferencedStudySequence=[]), STUDY_ROOT
    )
    assert plan.query.match == ()
    assert plan.query.includefield == ("ProcedureCodeSequence", "ReferencedStudySequence")
    assert plan.exact == ()


def test_private_tag_without_creator_is_8_hex_includefield() -> None:
    ds = ident("STUDY", StudyInstanceUID="")
    ds.add_new(0x00091010, "LO", None)
    plan = build_find_plan(ds, STUDY_ROOT)
    assert plan.query.match == ()
    assert plan.query.includefield == ("00091010", "StudyInstanceUID")
    assert (Tag(0x00091010), "LO") in plan.keys


def test_private_key_with_its_creator_is_not_matched() -> None:
    ds = ident("STUDY", StudyInstanceUID="")
    block = ds.private_block(0x0009, "ACME", create=True)
    block.add_new(0x10, "LO", "")
    plan = build_find_plan(ds, STUDY_ROOT)
    assert plan.query.match == ()
    assert "00091010" in plan.query.includefield


def test_match_and_includefield_sorted_by_name() -> None:
    # Tag order: StudyDate (0008,0020) < AccessionNumber (0008,0050) < PatientName (0010,0010)
    # < PatientID (0010,0020) < StudyInstanceUID (0020,000D) < StudyID (0020,0010).
    plan = build_find_plan(
        ident(
            "STUDY",
            StudyDate="20240101-",
            AccessionNumber="A*",
            PatientName="",
            PatientID="",
            StudyInstanceUID="",
            StudyID="S1",
        ),
        STUDY_ROOT,
    )
    assert plan.query.match == (
        ("AccessionNumber", "A*"),
        ("StudyDate", "20240101-"),
        ("StudyID", "S1"),
    )
    assert plan.query.includefield == ("PatientID", "PatientName", "StudyInstanceUID")


def test_control_keys_are_neither_matched_nor_included() -> None:
    plan = build_find_plan(
        ident(
            "STUDY",
            SpecificCharacterSet="ISO_IR 192",
            RetrieveAETitle="",
            InstanceAvailability="",
            StudyInstanceUID="",
        ),
        STUDY_ROOT,
    )
    assert plan.query == QidoQuery(QidoResource.STUDIES, includefield=("StudyInstanceUID",))
    # Control keys are answered (RetrieveAETitle, InstanceAvailability) but never sent to
    # the server; QueryRetrieveLevel and SpecificCharacterSet are not response keys at all.
    tags = [tag for tag, _ in plan.keys]
    assert tags == [Tag("RetrieveAETitle"), Tag("InstanceAvailability"), Tag("StudyInstanceUID")]


def test_keys_in_request_order_with_vrs() -> None:
    plan = build_find_plan(
        ident("SERIES", StudyInstanceUID="1.2", Modality="", SeriesNumber=None), STUDY_ROOT
    )
    assert plan.keys == (
        (Tag("Modality"), "CS"),
        (Tag("StudyInstanceUID"), "UI"),
        (Tag("SeriesNumber"), "IS"),
    )


# --- parse_level / check_keys ---------------------------------------------------------


def test_parse_level_missing() -> None:
    with pytest.raises(InvalidIdentifier, match=r"QueryRetrieveLevel \(0008,0052\) is missing"):
        parse_level(ident(None, PatientName=""), STUDY_ROOT)


def test_parse_level_empty() -> None:
    with pytest.raises(InvalidIdentifier, match="is missing"):
        parse_level(ident(""), STUDY_ROOT)


def test_parse_level_unknown() -> None:
    with pytest.raises(InvalidIdentifier) as info:
        parse_level(ident("FRAME"), STUDY_ROOT)
    assert str(info.value) == (
        "QueryRetrieveLevel 'FRAME' is not one of PATIENT, STUDY, SERIES, IMAGE"
    )


@pytest.mark.parametrize(
    ("model", "level", "expected"),
    [
        (STUDY_ROOT, "STUDY", QueryLevel.STUDY),
        (STUDY_ROOT, "SERIES", QueryLevel.SERIES),
        (STUDY_ROOT, "IMAGE", QueryLevel.IMAGE),
        (PATIENT_ROOT, "PATIENT", QueryLevel.PATIENT),
        (PATIENT_ROOT, "IMAGE", QueryLevel.IMAGE),
    ],
)
def test_parse_level_valid(model: InformationModel, level: str, expected: QueryLevel) -> None:
    assert parse_level(ident(level), model) is expected


def test_patient_level_in_study_root_is_invalid() -> None:
    with pytest.raises(InvalidIdentifier, match="only in the Patient Root model"):
        parse_level(ident("PATIENT", PatientID=""), STUDY_ROOT)
    with pytest.raises(InvalidIdentifier, match="only in the Patient Root model"):
        build_find_plan(ident("PATIENT", PatientID=""), STUDY_ROOT)


def test_build_plan_without_level_is_invalid() -> None:
    with pytest.raises(InvalidIdentifier, match="QueryRetrieveLevel"):
        build_find_plan(ident(None, PatientID=""), STUDY_ROOT)


def test_series_key_in_study_query_is_invalid() -> None:
    with pytest.raises(InvalidIdentifier) as info:
        build_find_plan(ident("STUDY", StudyInstanceUID="", Modality="CT"), STUDY_ROOT)
    assert str(info.value) == (
        "Modality (0008,0060) is a SERIES-level key and cannot be used in a STUDY-level query"
    )


def test_image_key_in_series_query_is_invalid() -> None:
    with pytest.raises(InvalidIdentifier) as info:
        check_keys(ident("SERIES", SOPInstanceUID=""), QueryLevel.SERIES)
    assert "SOPInstanceUID (0008,0018)" in str(info.value)
    assert "IMAGE-level key" in str(info.value)
    assert "SERIES-level query" in str(info.value)


def test_study_key_in_patient_query_is_invalid() -> None:
    with pytest.raises(InvalidIdentifier, match="StudyDate"):
        build_find_plan(ident("PATIENT", PatientID="", StudyDate=""), PATIENT_ROOT)


def test_upper_level_keys_at_lower_levels_are_allowed() -> None:
    plan = build_find_plan(
        ident(
            "IMAGE",
            PatientName="DOE^JOHN",
            StudyDate="20240115",
            Modality="CT",
            SOPInstanceUID="",
        ),
        STUDY_ROOT,
    )
    assert plan.query == QidoQuery(
        QidoResource.INSTANCES,
        match=(("Modality", "CT"), ("PatientName", "DOE^JOHN"), ("StudyDate", "20240115")),
        includefield=("SOPInstanceUID",),
    )
    check_keys(ident("SERIES", PatientID="", AccessionNumber=""), QueryLevel.SERIES)


def test_unknown_public_keys_belong_to_the_queried_level() -> None:
    plan = build_find_plan(ident("STUDY", PatientMotherBirthName=""), STUDY_ROOT)
    assert plan.query.includefield == ("PatientMotherBirthName",)


# --- result_to_identifier -------------------------------------------------------------


def _study_plan() -> Any:
    request = ident(
        "STUDY",
        SpecificCharacterSet="ISO_IR 192",
        StudyDate="",
        AccessionNumber="ACC1",
        RetrieveAETitle="",
        PatientName="",
        PatientID="P*",
        StudyInstanceUID="",
        ReferencedStudySequence=[],
    )
    return build_find_plan(request, STUDY_ROOT)


def test_response_has_exactly_the_requested_keys() -> None:
    plan = _study_plan()
    result = json_to_dataset(
        {
            "00080020": {"vr": "DA", "Value": ["20240115"]},
            "00080030": {"vr": "TM", "Value": ["101500"]},  # not requested: dropped
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        }
    )
    response = result_to_identifier(result, plan, "DIMSE_BRIDGE")
    assert [elem.keyword for elem in response] == [
        "StudyDate",
        "AccessionNumber",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "ReferencedStudySequence",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
    ]
    assert response.QueryRetrieveLevel == "STUDY"
    assert response.RetrieveAETitle == "DIMSE_BRIDGE"
    assert response.StudyDate == "20240115"
    assert response.AccessionNumber == "ACC1"  # exact key filled from the request
    assert str(response.PatientName) == "DOE^JOHN"
    assert response.PatientID == "P1"
    assert response.StudyInstanceUID == "1.2.3"
    assert response.ReferencedStudySequence == []
    assert "StudyTime" not in response
    assert "SpecificCharacterSet" not in response  # all ASCII


def test_missing_keys_are_present_but_empty() -> None:
    plan = _study_plan()
    response = result_to_identifier(Dataset(), plan, "AE1")
    assert response["StudyDate"].VR == "DA"
    assert response["StudyDate"].is_empty
    assert response["PatientName"].is_empty
    assert response["PatientID"].is_empty  # a wildcard key is not filled from the request
    assert response["StudyInstanceUID"].is_empty
    assert response["ReferencedStudySequence"].VR == "SQ"
    assert len(response.ReferencedStudySequence) == 0
    assert response.AccessionNumber == "ACC1"
    assert response.RetrieveAETitle == "AE1"


def test_server_value_wins_over_request_value() -> None:
    plan = build_find_plan(ident("STUDY", AccessionNumber="ACC1"), STUDY_ROOT)
    result = json_to_dataset({"00080050": {"vr": "SH", "Value": ["acc1"]}})
    assert result_to_identifier(result, plan, "AE").AccessionNumber == "acc1"


def test_retrieve_ae_title_added_when_not_requested() -> None:
    plan = build_find_plan(ident("SERIES", StudyInstanceUID="1.2", Modality=""), STUDY_ROOT)
    response = result_to_identifier(Dataset(), plan, "BRIDGE_AE")
    assert [elem.keyword for elem in response] == [
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "Modality",
        "StudyInstanceUID",
    ]
    assert response.RetrieveAETitle == "BRIDGE_AE"
    assert response.QueryRetrieveLevel == "SERIES"
    # StudyInstanceUID went into the path, and is still answered from the request.
    assert response.StudyInstanceUID == "1.2"


def test_non_ascii_person_name_sets_utf8_and_encodes() -> None:
    plan = build_find_plan(ident("STUDY", PatientName="", StudyInstanceUID=""), STUDY_ROOT)
    result = json_to_dataset(
        {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "MÜLLER^HANS"}]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        }
    )
    response = result_to_identifier(result, plan, "DIMSE_BRIDGE")
    assert response.SpecificCharacterSet == UTF8_CHARSET == "ISO_IR 192"
    data = encode(response, False, True)
    assert data is not None
    assert "MÜLLER^HANS".encode() in data
    back = decode(BytesIO(data), False, True)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "MÜLLER^HANS"
    assert back.PatientName.family_name == "MÜLLER"
    assert back.StudyInstanceUID == "1.2.3"


def test_non_ascii_exact_value_from_request_sets_utf8() -> None:
    request = ident("STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="MÜLLER^HANS")
    plan = build_find_plan(request, STUDY_ROOT)
    response = result_to_identifier(Dataset(), plan, "AE")
    assert str(response.PatientName) == "MÜLLER^HANS"
    assert response.SpecificCharacterSet == "ISO_IR 192"


# --- json_to_dataset ------------------------------------------------------------------

QIDO_STUDY = {
    "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
    "00080020": {"vr": "DA", "Value": ["20240115"]},
    "00080050": {"vr": "SH"},
    "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
    "00081032": {
        "vr": "SQ",
        "Value": [
            {
                "00080100": {"vr": "SH", "Value": ["CTHEAD"]},
                "00080104": {"vr": "LO", "Value": ["CT Head"]},
            }
        ],
    },
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "MÜLLER^HANS"}]},
    "00100020": {"vr": "LO", "Value": ["P1"]},
    "0020000D": {"vr": "UI", "Value": ["1.2.840.113619.2.1"]},
    "00201206": {"vr": "IS", "Value": [3]},
    "00201208": {"vr": "IS", "Value": [42]},
}


def test_json_to_dataset_realistic_study() -> None:
    ds = json_to_dataset(QIDO_STUDY)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.StudyDate == "20240115"
    assert ds["AccessionNumber"].is_empty
    assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
    assert len(ds.ProcedureCodeSequence) == 1
    assert ds.ProcedureCodeSequence[0].CodeValue == "CTHEAD"
    assert ds.ProcedureCodeSequence[0].CodeMeaning == "CT Head"
    assert str(ds.PatientName) == "MÜLLER^HANS"
    assert ds.PatientName.given_name == "HANS"
    assert ds.PatientID == "P1"
    assert ds.StudyInstanceUID == "1.2.840.113619.2.1"
    assert ds.NumberOfStudyRelatedSeries == 3
    assert int(ds.NumberOfStudyRelatedInstances) == 42


# --- patient helpers ------------------------------------------------------------------


def test_patient_identity() -> None:
    assert patient_identity(ident(None, PatientID="P1", IssuerOfPatientID="HOSP")) == (
        "P1",
        "HOSP",
    )
    assert patient_identity(ident(None, PatientID="P1")) == ("P1", "")
    assert patient_identity(Dataset()) == ("", "")


def test_add_patient_counts_sums_studies() -> None:
    studies = [
        json_to_dataset(
            {
                "00201206": {"vr": "IS", "Value": [2]},
                "00201208": {"vr": "IS", "Value": [10]},
            }
        ),
        ident(None, NumberOfStudyRelatedSeries="3", NumberOfStudyRelatedInstances="7"),
        ident(None, NumberOfStudyRelatedSeries=None),  # empty: counts as 0
        Dataset(),  # absent: counts as 0
    ]
    patient = ident(None, PatientID="P1")
    add_patient_counts(patient, studies)
    assert patient.NumberOfPatientRelatedStudies == 4
    assert patient.NumberOfPatientRelatedSeries == 5
    assert patient.NumberOfPatientRelatedInstances == 17


def test_add_patient_counts_no_studies() -> None:
    patient = Dataset()
    add_patient_counts(patient, [])
    assert patient.NumberOfPatientRelatedStudies == 0
    assert patient.NumberOfPatientRelatedSeries == 0
    assert patient.NumberOfPatientRelatedInstances == 0


def test_patient_plan_needs_counts() -> None:
    plan = build_find_plan(
        ident("PATIENT", PatientID="", NumberOfPatientRelatedStudies=None), PATIENT_ROOT
    )
    assert plan.needs_patient_counts is True
    assert "NumberOfPatientRelatedStudies" not in plan.query.includefield
    plain = build_find_plan(ident("PATIENT", PatientID=""), PATIENT_ROOT)
    assert plain.needs_patient_counts is False


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_file_meta_elements_are_neither_matched_nor_returned(level: str) -> None:
    """Group 0002 belongs to Part 10 files, not identifiers: ignored like a lenient PACS."""
    plain = ident(level, StudyInstanceUID="1.2.3", StudyDate="")
    with_meta = ident(level, StudyInstanceUID="1.2.3", StudyDate="")
    with_meta.add_new((0x0002, 0x0003), "UI", "1.2.3.4.5")
    with_meta.add_new((0x0002, 0x0010), "UI", "1.2.840.10008.1.2.1")
    expected = build_find_plan(plain, STUDY_ROOT)
    plan = build_find_plan(with_meta, STUDY_ROOT)
    assert plan.query == expected.query
    assert plan.keys == expected.keys
    assert all(tag.group != 0x0002 for tag, _ in plan.keys)
