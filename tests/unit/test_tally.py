"""The retrieve tally: counts, final status and the ErrorComment that says why."""

from __future__ import annotations

from bridge.dimse.retrieval.tally import Tally
from bridge.models import InstanceRef
from bridge.translate.status import OUT_OF_RESOURCES_SUBOPS, SUCCESS, WARNING_SUBOPS


def _ref(n: int) -> InstanceRef:
    return InstanceRef(study_uid="1.2", series_uid="1.2.3", sop_instance_uid=f"1.2.3.{n}")


def test_no_failure_has_no_comment() -> None:
    tally = Tally(total=2)
    tally.record_store(_ref(1), SUCCESS, 10)
    tally.record_store(_ref(2), SUCCESS, 10)
    assert tally.final_status() == SUCCESS
    assert tally.comment() is None
    assert tally.bytes_sent == 20


def test_reasons_are_counted_most_frequent_first() -> None:
    tally = Tally(total=5)
    tally.record_store(_ref(1), SUCCESS, 10)
    tally.record_failure("1.2.3.2", "peer accepts no syntax")
    tally.record_failures(["1.2.3.3", "1.2.3.4"], "DICOMweb server unreachable")
    tally.record_store(_ref(5), 0xA700, 10)
    assert tally.failed == ["1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5"]
    assert tally.final_status() == WARNING_SUBOPS
    assert tally.comment() == (
        "2 failed: DICOMweb server unreachable; 1: peer accepts no syntax; "
        "1: peer answered C-STORE 0xA700"
    )


def test_every_failure_is_out_of_resources_subops() -> None:
    tally = Tally(total=1)
    tally.record_store(_ref(1), None, 10)
    assert tally.final_status() == OUT_OF_RESOURCES_SUBOPS
    assert tally.comment() == "1 failed: no C-STORE response from the peer"
    assert tally.bytes_sent == 0
