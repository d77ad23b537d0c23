"""The one canonical UCUM unit for each laboratory LOINC code RadTrack uses, and conversion into it.

Every lab value is stored in its code's canonical unit, so features and models never
see two units for one test. A unit or code not in these tables is refused with a
`UnitError` that names both; nothing is guessed.

A value outside its analyte's plausible range (`Analyte.plausible_range`, in the
canonical unit) is refused with an `ImplausibleValue`: such a number is a unit or keying
error, never a result to compute with.

Units are UCUM case-sensitive codes (https://ucum.org/ucum): ``ug`` is microgram, ``L``
and ``l`` are both litre, ``U`` is the enzyme unit (umol/min) and ``kat`` the katal
(mol/s). A few spellings seen in lab feeds that are not UCUM codes are normalised first
(see `unit_normalise`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ANALYTES",
    "CODE_ALIASES",
    "Analyte",
    "CanonicalValue",
    "ImplausibleValue",
    "UnitError",
    "analyte_for",
    "lab_value_plausibility_check",
    "lab_value_to_canonical",
    "unit_factor",
    "unit_normalise",
]


class UnitError(ValueError):
    """A lab code or unit RadTrack has no conversion for; names both."""

    def __init__(self, message: str, *, loinc_code: str, unit: str | None) -> None:
        super().__init__(message)
        self.loinc_code = loinc_code
        self.unit = unit


class ImplausibleValue(UnitError):
    """A converted lab value outside its analyte's plausible range; names both."""


# Mass in grams and volume in litres of the UCUM prefixes a lab report uses.
_MASS_G = {"g": 1.0, "mg": 1e-3, "ug": 1e-6, "ng": 1e-9, "pg": 1e-12}
_VOLUME_L = {"L": 1.0, "dL": 1e-1, "mL": 1e-3}


def _mass_concentration(canonical: str) -> dict[str, float]:
    """Factors from every mass/volume unit (g..pg per L, dL, mL) into ``canonical``."""
    mass, volume = canonical.split("/")
    canonical_g_per_l = _MASS_G[mass] / _VOLUME_L[volume]
    return {
        f"{m}/{v}": _MASS_G[m] / _VOLUME_L[v] / canonical_g_per_l
        for m in _MASS_G
        for v in _VOLUME_L
    }


# Haemoglobin in substance concentration counts the monomer (one haem, one globin
# chain): M = 64 458 g/mol / 4 = 16 114.5 g/mol, so 1 mmol/L = 16.1145 g/L = 1.61145 g/dL
# (IFCC/ICSH convention; 1 g/dL = 0.6206 mmol/L as printed in SI conversion tables).
HEMOGLOBIN_G_PER_DL_PER_MMOL_PER_L = 1.61145

# Enzyme activity: 1 U = 1 umol/min and 1 kat = 1 mol/s, so 1 ukat = 60 U.
_ENZYME_ACTIVITY_U_PER_L = {
    "U/L": 1.0,
    "U/mL": 1000.0,
    "kU/L": 1000.0,
    "ukat/L": 60.0,
    "nkat/L": 0.06,
    # Lab feeds write the enzyme unit as IU/L; UCUM's [IU] is the WHO arbitrary unit,
    # but for an enzyme it is reported as, and means, U (umol/min).
    "[IU]/L": 1.0,
}


@dataclass(frozen=True)
class Analyte:
    """A laboratory test: LOINC code, canonical UCUM unit and the units converted into it.

    ``factors[unit]`` multiplies a value in ``unit`` to give it in ``canonical_unit``.
    ``key`` is the short name features use (``cea_latest``...). ``plausible_range``
    (low, high, inclusive, canonical unit) bounds what a real specimen can give: set
    well outside the extremes reported in patients, so only impossible numbers (a
    wrong unit, a keying error, an overflow) are refused, never a rare true one.
    """

    key: str
    loinc_code: str
    display: str
    canonical_unit: str
    factors: Mapping[str, float] = field(repr=False)
    plausible_range: tuple[float, float] = (0.0, float("inf"))


ANALYTES: dict[str, Analyte] = {
    a.loinc_code: a
    for a in (
        Analyte(
            "cea",
            "2039-6",
            "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma",
            "ng/mL",
            _mass_concentration("ng/mL"),
            # Metastatic colorectal cancer reaches tens of thousands of ng/mL; 1 g/L is not.
            (0.0, 1_000_000.0),
        ),
        Analyte(
            "ldh",
            "2532-0",
            "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L",
            _ENZYME_ACTIVITY_U_PER_L,
            # Tumour lysis and haemolysis reach tens of thousands of U/L.
            (0.0, 500_000.0),
        ),
        Analyte(
            "crp",
            "1988-5",
            "C reactive protein [Mass/volume] in Serum or Plasma",
            "mg/L",
            _mass_concentration("mg/L"),
            # Septic shock rarely passes 500 mg/L; 5 g/L of one plasma protein is impossible.
            (0.0, 5_000.0),
        ),
        Analyte(
            "albumin",
            "1751-7",
            "Albumin [Mass/volume] in Serum or Plasma",
            "g/dL",
            _mass_concentration("g/dL"),
            # Total serum protein is about 7 g/dL; albumin above 15 g/dL is not serum. Below
            # 0.5 g/dL is not a living patient's either: it is 3.5 g/dL labelled "g/L".
            (0.5, 15.0),
        ),
        Analyte(
            "hemoglobin",
            "718-7",
            "Hemoglobin [Mass/volume] in Blood",
            "g/dL",
            {
                **_mass_concentration("g/dL"),
                "mmol/L": HEMOGLOBIN_G_PER_DL_PER_MMOL_PER_L,
            },
            # Whole blood holds at most about 35 g/dL of haemoglobin (red cells themselves);
            # below 2 g/dL no patient is alive to be tested: 1.35 is 13.5 g/dL labelled "g/L".
            (2.0, 35.0),
        ),
    )
}

# Other LOINC codes for the same quantity, stored under the canonical code:
# 59260-0 is Hemoglobin [Moles/volume] in Blood (reported in mmol/L in much of Europe).
CODE_ALIASES: dict[str, str] = {"59260-0": "718-7"}

_NOT_UCUM = {"IU/L": "[IU]/L", "iu/L": "[IU]/L"}
_LOWER_LITRE = re.compile(r"/(d|m)?l$")


def unit_normalise(unit: str) -> str:
    """A unit as written in a feed, spelled as the UCUM code the tables use.

    Strips blanks, writes the micro sign (U+00B5) and Greek mu (U+03BC) as ``u``,
    ``mcg`` as ``ug``, ``IU/L`` as ``[IU]/L``, and a trailing lower-case litre
    (``/dl``, ``/ml``, ``/l``) as ``L`` (UCUM has both spellings for the litre).
    Anything else (``MG/DL``: megagram) is left alone and refused later.
    """
    text = unit.strip().replace("\u00b5", "u").replace("\u03bc", "u").replace("mcg", "ug")
    text = _LOWER_LITRE.sub(lambda m: "/" + (m.group(1) or "") + "L", text)
    return _NOT_UCUM.get(text, text)


def analyte_for(loinc_code: str) -> Analyte:
    """The analyte for a LOINC code (aliases included); `UnitError` for any other code."""
    code = CODE_ALIASES.get(loinc_code.strip(), loinc_code.strip())
    try:
        return ANALYTES[code]
    except KeyError:
        known = ", ".join(f"{a.loinc_code} ({a.key})" for a in ANALYTES.values())
        raise UnitError(
            f"LOINC code {loinc_code!r} is not a lab test RadTrack uses (known: {known})",
            loinc_code=loinc_code,
            unit=None,
        ) from None


def unit_factor(*, loinc_code: str, unit: str) -> float:
    """The factor that takes a value of ``loinc_code`` in ``unit`` to its canonical unit."""
    analyte = analyte_for(loinc_code)
    normalised = unit_normalise(unit or "")
    try:
        return analyte.factors[normalised]
    except KeyError:
        raise UnitError(
            f"unit {unit!r} is not known for LOINC {loinc_code} ({analyte.key}); "
            f"canonical unit is {analyte.canonical_unit!r}, accepted: "
            f"{', '.join(sorted(analyte.factors))}",
            loinc_code=loinc_code,
            unit=unit,
        ) from None


@dataclass(frozen=True)
class CanonicalValue:
    """A lab value in its canonical unit, under its canonical LOINC code."""

    loinc_code: str
    value: float
    unit: str


def lab_value_to_canonical(*, loinc_code: str, value: float, unit: str) -> CanonicalValue:
    """Convert ``value`` in ``unit`` to the canonical unit of ``loinc_code``.

    The result is rounded to 12 significant digits so that a conversion such as
    41 g/L -> 4.1 g/dL does not carry binary noise into comparisons on re-import.
    Raises `UnitError` for an unknown code or unit, or a value that is not finite, and
    `ImplausibleValue` for one outside the analyte's plausible range.
    """
    analyte = analyte_for(loinc_code)
    factor = unit_factor(loinc_code=loinc_code, unit=unit)
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise UnitError(
            f"value {value!r} for LOINC {loinc_code} is not a finite number",
            loinc_code=loinc_code,
            unit=unit,
        )
    converted = float(f"{number * factor:.12g}")
    lab_value_plausibility_check(analyte=analyte, value=converted, given=f"{value!r} {unit}")
    return CanonicalValue(analyte.loinc_code, converted, analyte.canonical_unit)


def lab_value_plausibility_check(*, analyte: Analyte, value: float, given: str = "") -> None:
    """Refuse a value (canonical unit) outside the analyte's plausible range.

    A concentration or activity is never negative, and the upper bound is far above
    any result reported in a patient (`Analyte`), so what fails is a unit or keying
    error. Raises `ImplausibleValue` naming the value, the range and the unit.
    """
    low, high = analyte.plausible_range
    if low <= value <= high:
        return
    shown = f" (given as {given})" if given else ""
    raise ImplausibleValue(
        f"value {value:g} {analyte.canonical_unit}{shown} for LOINC {analyte.loinc_code} "
        f"({analyte.key}) is outside the plausible range {low:g}-{high:g} "
        f"{analyte.canonical_unit}; check the unit and the number",
        loinc_code=analyte.loinc_code,
        unit=analyte.canonical_unit,
    )
