"""The research tables carry no real date and no original UID, in any column.

The audit found progression and best-response dates, revision times, dates in free
text and the merged-into Tracking UID exported as they are; only ``study_date``,
``study_instance_uid`` and ``lesion_uid`` were pseudonymised. The tables are now
de-identified value by value (`analytics.research.deid.value_pseudonymise`); the test
over a whole export walks every value it writes and every value the selectors read.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pandas as pd
import pytest

from analytics.lesions.selectors import measurements_table, responses_table
from analytics.models import BestOverallResponse
from analytics.research.deid import (
    TEXT_REMOVED,
    Deidentifier,
    PatientKey,
    UidMap,
    action_table_load,
    text_pseudonymise,
    value_pseudonymise,
)
from analytics.research.export import (
    ResearchExport,
    _pseudonymise,
    _Run,
    _run_start,
    research_tables,
)
from imaging.models import LesionMeasurement
from patients.models import LabResult
from tests.analytics.finding_rows import finding_rows_make
from tests.api.helpers import rows_make

KEY = PatientKey(pseudonym="RES-TEST", offset_days=-400, identifiers=frozenset({"smith", "mrn-a"}))
TRACKING_UID = "1.2.826.0.1.3680043.8.498.77477674887973387861401676449610284329"
ISO = re.compile(r"(?<!\d)\d{4}-\d{2}-\d{2}(?!\d)")
UID = re.compile(r"(?<![\w.])[0-2](?:\.\d+){3,}")


def _uids() -> UidMap:
    return UidMap(b"salt for the test")


# -- text, value by value (no database) ---------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("Liver 1", "Liver 1"),
        ("new since baseline, first seen on 2024-04-10", "new since baseline, first seen on 2023-03-07"),
        ("back after it was confirmed gone on 2024-01-10, first seen again on 2024-04-10",
         "back after it was confirmed gone on 2022-12-06, first seen again on 2023-03-07"),
        ("revised at 2024-04-11T09:00:00+00:00", "revised at 2023-03-08T09:00:00+00:00"),
        ("DA 20240410, DT 20240410093000", "DA 20230307, DT 20230307093000"),
        ("the iUPD of 2024-04-10 is confirmed", "the iUPD of 2023-03-07 is confirmed"),
        # numbers, codes and rule citations are no dates
        ("RECIST 1.1 section 4.3.2: 12.5 mm, 2015.3 ml", "RECIST 1.1 section 4.3.2: 12.5 mm, 2015.3 ml"),
        ("2039-6", "2039-6"),
        ("20241399", "20241399"),
        # a date in another form, a date that is none, or the patient named: removed whole
        ("seen in April 2024", TEXT_REMOVED),
        ("seen on 10/04/2024", TEXT_REMOVED),
        ("seen on 10.04.2024", TEXT_REMOVED),
        ("seen on 2024-02-30", TEXT_REMOVED),
        ("Mrs Smith's lesion", TEXT_REMOVED),
        ("ordered under MRN-A", TEXT_REMOVED),
        ("Smithson", "Smithson"),
    ],
)  # fmt: skip
def test_text_has_its_dates_moved_or_is_removed(text, expected):
    assert text_pseudonymise(text, key=KEY, uids=_uids()) == expected


def test_uids_in_text_are_remapped_as_the_uid_columns_are():
    uids = _uids()
    text = text_pseudonymise(f"merged into {TRACKING_UID}.", key=KEY, uids=uids)
    assert text == f"merged into {uids(TRACKING_UID)}."
    assert TRACKING_UID not in text


def test_json_text_stays_json_with_each_value_cleaned():
    revisions = [
        {"at": "2024-04-11T09:00:00+00:00", "field": "recist_response", "from": "SD",
         "to": "PD", "reason": "review; now: new lesion first seen on 2024-04-10"},
        {"at": "2024-04-12T10:00:00+00:00", "reason": "Smith asked", "count": 2},
    ]  # fmt: skip
    out = json.loads(text_pseudonymise(json.dumps(revisions), key=KEY, uids=_uids()))
    assert out == [
        {"at": "2023-03-08T09:00:00+00:00", "field": "recist_response", "from": "SD",
         "to": "PD", "reason": "review; now: new lesion first seen on 2023-03-07"},
        {"at": "2023-03-09T10:00:00+00:00", "reason": TEXT_REMOVED, "count": 2},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.date(2024, 4, 10), dt.date(2023, 3, 7)),
        (dt.datetime(2024, 4, 10, 9, 30, tzinfo=dt.UTC), dt.datetime(2023, 3, 7, 9, 30, tzinfo=dt.UTC)),
        (pd.Timestamp("2024-04-10T09:30Z"), pd.Timestamp("2023-03-07T09:30Z")),
        ((dt.date(2024, 4, 10), "2024-04-10"), (dt.date(2023, 3, 7), "2023-03-07")),
        ({"on": dt.date(2024, 4, 10)}, {"on": dt.date(2023, 3, 7)}),
        (None, None),
        (12.5, 12.5),
        (True, True),
        (2024, 2024),  # a number is a number, whatever its digits
    ],
)  # fmt: skip
def test_values_are_moved_by_their_type(value, expected):
    assert value_pseudonymise(value, key=KEY, uids=_uids()) == expected


def test_a_column_added_to_a_table_later_is_pseudonymised_too():
    """No list of columns to forget: a date, UID or text column the tables do not have
    today is de-identified like the others."""
    run = _Run(
        export_id="test",
        deidentifier=Deidentifier(table=action_table_load(), uids=_uids()),
        keys={1: KEY},
        result=ResearchExport(export_id="test", out_dir=None, key_path=None),
    )
    table = pd.DataFrame(
        {
            "patient_id": ["MRN-A", "MRN-A"],
            "study_instance_uid": ["1.2.3.4.5", "1.2.3.4.6"],
            "study_date": [dt.date(2024, 1, 10), dt.date(2024, 4, 10)],
            "confirmed_on": [None, dt.date(2024, 4, 20)],
            "reviewed_at": pd.to_datetime(["2024-01-11T08:00Z", "2024-04-11T08:00Z"]),
            "parent_uid": ["", TRACKING_UID],
            "comment": ["", f"seen on 2024-04-10 in {TRACKING_UID}"],
            "volume_ml": [1.5, float("nan")],
        }
    )
    out = _pseudonymise(table, run, {"MRN-A": KEY})
    uids = run.deidentifier.uids
    assert list(out["patient_id"]) == ["RES-TEST", "RES-TEST"]
    assert list(out["study_date"]) == [dt.date(2022, 12, 6), dt.date(2023, 3, 7)]
    assert list(out["confirmed_on"]) == [None, dt.date(2023, 3, 17)]
    assert list(out["reviewed_at"]) == list(
        pd.to_datetime(["2022-12-07T08:00Z", "2023-03-08T08:00Z"])
    )
    assert list(out["study_instance_uid"]) == [uids("1.2.3.4.5"), uids("1.2.3.4.6")]
    assert list(out["parent_uid"]) == ["", uids(TRACKING_UID)]
    assert list(out["comment"]) == ["", f"seen on 2023-03-07 in {uids(TRACKING_UID)}"]
    assert out["volume_ml"].iloc[0] == 1.5 and pd.isna(out["volume_ml"].iloc[1])


# -- a whole export, every value walked ---------------------------------------------
def _dates_and_uids(value, column: str) -> tuple[set[dt.date], set[str]]:
    """Every date (typed, or ISO inside text) and every UID (a ``*_uid`` column's value,
    or a UID inside text) a table value carries."""
    if isinstance(value, dt.datetime):
        return {value.date()}, set()
    if isinstance(value, dt.date):
        return {value}, set()
    if not isinstance(value, str) or not value:
        return set(), set()
    dates = {dt.date.fromisoformat(d) for d in ISO.findall(value)}
    uids = set(UID.findall(value))
    if column.endswith("_uid"):
        uids.add(value)
    return dates, uids


def _walk(tables: dict[str, pd.DataFrame]):
    for name, table in tables.items():
        for column in table.columns:
            for row, value in zip(table["patient_id"], table[column], strict=True):
                yield name, column, row, value


def _labs(patient) -> pd.DataFrame:
    rows = LabResult.objects.filter(patient=patient)
    return pd.DataFrame({"patient_id": [patient.patient_id for _ in rows],
                         "observed_at": [lab.observed_at for lab in rows]})  # fmt: skip


@pytest.mark.django_db
def test_no_exported_value_carries_a_real_date_or_an_original_uid():
    rows = rows_make()
    findings = finding_rows_make(rows)
    alice = rows.alice
    response = rows.response
    response.recist_response = "PD"
    response.progression_dated_from = dt.date(2024, 4, 10)
    response.response_note = "new lesion Liver 6 (first seen on 2024-04-10)"
    response.revisions = [
        {"at": "2024-04-11T09:00:00+00:00", "field": "recist_response", "from": "PR",
         "to": "PD", "reason": "new imaging results were processed; now: PD"},
    ]  # fmt: skip
    response.save()
    BestOverallResponse.objects.create(
        patient=alice, recist="PR", recist_date=dt.date(2024, 4, 10), irecist="iPR",
        irecist_date=dt.date(2024, 4, 10),
    )  # fmt: skip
    LesionMeasurement.objects.filter(pk=findings.not_found.pk).update(
        state_reason="new since baseline, first seen on 2024-04-10"
    )
    LesionMeasurement.objects.filter(pk=findings.merged.pk).update(
        state_reason=f"merged into {rows.lesion.tracking_uid}"
    )

    patients = [alice]
    originals = {
        "measurements.csv": measurements_table(patient_ids=[alice.patient_id]),
        "responses.csv": responses_table(patient_ids=[alice.patient_id]),
        "labs.csv": _labs(alice),
    }
    real_dates: set[dt.date] = set()
    real_uids: set[str] = set()
    for _, column, _, value in _walk(originals):
        dates, uids = _dates_and_uids(value, column)
        real_dates |= dates
        real_uids |= uids
    # the fixture has each kind of value the audit found exported as it was
    assert {dt.date(2024, 1, 10), dt.date(2024, 4, 10), dt.date(2024, 4, 11)} <= real_dates
    assert rows.lesion.tracking_uid in real_uids

    run = _run_start(patients)
    offset = dt.timedelta(days=run.keys[alice.pk].offset_days)
    pseudonym = run.keys[alice.pk].pseudonym
    tables = research_tables(patients=patients, run=run)
    leaks, unshifted = [], []
    dated_columns = set()
    for name, column, row, value in _walk(tables):
        assert row == pseudonym
        text = json.dumps(value, default=str) if not isinstance(value, str) else value
        for day in real_dates:
            for form in (day.isoformat(), day.strftime("%Y%m%d")):
                if re.search(rf"(?<!\d){form}(?!\d)", text):
                    leaks.append(f"{name} {column}: real date {form} in {text!r}")
        leaks += [f"{name} {column}: original UID in {text!r}" for u in real_uids if u in text]
        if column == "observed_at":  # labs.csv writes its date-times as ISO text
            value = dt.datetime.fromisoformat(value)
        dates, _ = _dates_and_uids(value, column)
        dated_columns |= {column} if dates else set()
        unshifted += [f"{name} {column}: {d}" for d in dates if d - offset not in real_dates]
    assert not leaks, leaks
    assert not unshifted, unshifted  # every date is a real one moved by the offset
    assert {
        "study_date", "progression_dated_from", "best_overall_response_date",
        "irecist_best_overall_response_date", "revisions", "state_reason", "response_note",
        "observed_at",
    } <= dated_columns  # fmt: skip

    measurements = tables["measurements.csv"]
    merged = set(measurements["merged_into_uid"]) - {""}
    assert merged and merged <= set(measurements["lesion_uid"])  # the same map
    responses = tables["responses.csv"]
    assert json.loads(responses["revisions"].iloc[-1])[0]["at"] == (
        (dt.datetime(2024, 4, 11, 9, tzinfo=dt.UTC) + offset).isoformat()
    )
    assert set(responses["best_overall_response_date"]) == {dt.date(2024, 4, 10) + offset}
