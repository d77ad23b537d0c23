"""Canonical lab units per LOINC code and the conversions into them (no database)."""

import math

import pytest

from imaging.core.synthetic.simulated import LAB_TESTS
from patients.units import ANALYTES, UnitError, lab_value_to_canonical, unit_factor, unit_normalise


def test_canonical_units_match_the_cohort_generator():

    assert {t.loinc_code: t.unit for t in LAB_TESTS} == {
        code: a.canonical_unit for code, a in ANALYTES.items()
    }


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected", "canonical"),
    [
        # CEA: ng/mL and ug/L are the same number.
        ("2039-6", 4.2, "ng/mL", 4.2, "ng/mL"),
        ("2039-6", 4.2, "ug/L", 4.2, "ng/mL"),
        ("2039-6", 4.2, "\u00b5g/L", 4.2, "ng/mL"),
        ("2039-6", 4200.0, "ng/L", 4.2, "ng/mL"),
        # LDH: 1 ukat/L = 60 U/L (1 U = 1 umol/min, 1 kat = 1 mol/s).
        ("2532-0", 250.0, "U/L", 250.0, "U/L"),
        ("2532-0", 4.0, "ukat/L", 240.0, "U/L"),
        ("2532-0", 1000.0, "nkat/L", 60.0, "U/L"),
        ("2532-0", 250.0, "IU/L", 250.0, "U/L"),
        # CRP: mg/dL = 10 mg/L.
        ("1988-5", 1.5, "mg/dL", 15.0, "mg/L"),
        ("1988-5", 15.0, "mg/l", 15.0, "mg/L"),
        # Albumin: g/L = 0.1 g/dL.
        ("1751-7", 41.0, "g/L", 4.1, "g/dL"),
        ("1751-7", 4.1, "g/dl", 4.1, "g/dL"),
        # Haemoglobin: g/L and mmol/L (monomer, 16 114.5 g/mol: 1 mmol/L = 1.61145 g/dL).
        ("718-7", 135.0, "g/L", 13.5, "g/dL"),
        ("718-7", 8.0, "mmol/L", 12.8916, "g/dL"),
        ("59260-0", 8.0, "mmol/L", 12.8916, "g/dL"),
    ],
)
def test_conversion_to_canonical(code, value, unit, expected, canonical):
    result = lab_value_to_canonical(loinc_code=code, value=value, unit=unit)
    assert result.unit == canonical
    assert result.value == pytest.approx(expected, rel=1e-9)


def test_hemoglobin_factor_against_the_published_reciprocal():
    # SI tables: 1 g/dL haemoglobin = 0.6206 mmol/L.
    assert 1 / unit_factor(loinc_code="718-7", unit="mmol/L") == pytest.approx(0.6206, abs=1e-4)


def test_conversion_leaves_no_binary_noise():
    assert lab_value_to_canonical(loinc_code="1751-7", value=41, unit="g/L").value == 4.1


def test_alias_code_is_stored_under_the_canonical_code():
    assert (
        lab_value_to_canonical(loinc_code="59260-0", value=8, unit="mmol/L").loinc_code == "718-7"
    )


@pytest.mark.parametrize(
    ("code", "unit"),
    [
        ("2532-0", "mg/dL"),
        ("2039-6", "U/L"),
        ("1751-7", "umol/L"),
        ("718-7", "MG/DL"),
        ("1988-5", ""),
    ],
)
def test_unknown_unit_is_refused_naming_code_and_unit(code, unit):
    with pytest.raises(UnitError) as info:
        lab_value_to_canonical(loinc_code=code, value=1.0, unit=unit)
    message = str(info.value)
    assert code in message and repr(unit) in message
    assert ANALYTES[code if code in ANALYTES else "718-7"].canonical_unit in message
    assert (info.value.loinc_code, info.value.unit) == (code, unit)


def test_unknown_code_is_refused_naming_the_code():
    with pytest.raises(UnitError, match="'8867-4' is not a lab test"):
        lab_value_to_canonical(loinc_code="8867-4", value=70, unit="/min")


def test_non_finite_value_is_refused():
    with pytest.raises(UnitError, match="not a finite number"):
        lab_value_to_canonical(loinc_code="2039-6", value=math.nan, unit="ng/mL")


def test_unit_normalise():
    assert unit_normalise(" mcg/dl ") == "ug/dL"
    assert unit_normalise("\u03bcg/ml") == "ug/mL"
    assert unit_normalise("IU/l") == "[IU]/L"
    assert unit_normalise("MG/DL") == "MG/DL"


@pytest.mark.parametrize(
    "code, value, unit",
    [
        ("718-7", 13.5, "g/L"),  # 13.5 g/dL labelled g/L: 1.35 g/dL, no living patient
        ("1751-7", 3.5, "g/L"),  # 3.5 g/dL labelled g/L: 0.35 g/dL
    ],
)
def test_a_unit_label_off_by_ten_is_refused_not_stored_ten_times_too_small(code, value, unit):
    from patients.units import ImplausibleValue

    with pytest.raises(ImplausibleValue, match="outside the plausible range"):
        lab_value_to_canonical(loinc_code=code, value=value, unit=unit)
    # The lowest values a patient is tested alive with still pass.
    assert lab_value_to_canonical(loinc_code=code, value=value, unit="g/dL").value == value
