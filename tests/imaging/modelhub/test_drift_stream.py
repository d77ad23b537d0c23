"""Drift on a generated stream whose noise and kernel change half-way (no database).

20 studies as the model was validated on (a standard kernel's correlated noise, 12 HU),
then 20 with a sharp kernel's white noise at 28 HU. The checks must stay silent on the
first half and find the change within a window after it: as a new protocol when the
header says the kernel changed, and as a shift either way."""

from __future__ import annotations

import pytest

from imaging.core.modelhub.drift import drift_check, flat_statistics, noise_estimates, protocol_key
from tests.imaging.modelhub.stream import AFTER, BEFORE, statistics, study

WINDOW = 10


@pytest.fixture(scope="module")
def stream():
    reference_rows = [flat_statistics(*statistics(1000 + n, BEFORE)) for n in range(20)]
    reference = {
        key: [r[key] for r in reference_rows if r[key] is not None] for key in reference_rows[0]
    }
    rows = [flat_statistics(*statistics(n, BEFORE if n < 20 else AFTER)) for n in range(40)]
    return reference, rows


def test_the_noise_estimate_follows_the_noise_and_the_kernel():
    import numpy as np
    from scipy import ndimage

    before_hu, organ = study(1, BEFORE)
    after_hu, _ = study(1, AFTER)
    soft = ndimage.binary_erosion((organ == 0) & (before_hu > -200), iterations=2)
    noise_before, corr_before = noise_estimates(before_hu, soft)
    noise_after, corr_after = noise_estimates(after_hu, soft)
    # White noise: the estimate is its SD and the correlation measure about 1.
    assert noise_after == pytest.approx(AFTER.noise_hu, rel=0.1)
    assert corr_after == pytest.approx(1.0, abs=0.15)
    # A soft kernel's correlated noise looks smaller to a fine residual and correlated.
    assert noise_before < BEFORE.noise_hu and corr_before > 1.3
    assert np.isfinite([noise_before, corr_before]).all()


def _replay(rows, protocols, reference, known):
    """Findings per study, as the pipeline runs the checks after each one."""
    found = []
    for n in range(len(rows)):
        protocol = protocols[n]
        history = [rows[m] for m in range(n + 1) if protocols[m] == protocol]
        for f in drift_check(protocol=protocol, history=history, reference=reference,
                             known_protocols=known | set(protocols[:n]), window=WINDOW):  # fmt: skip
            found.append((n, f))
    return found


def test_a_new_kernel_in_the_header_is_a_new_protocol_and_its_shift_is_found(stream):
    reference, rows = stream
    before = protocol_key(scanner="Acme", kernel=BEFORE.kernel, slice_thickness_mm=2.0)
    after = protocol_key(scanner="Acme", kernel=AFTER.kernel, slice_thickness_mm=2.0)
    protocols = [before] * 20 + [after] * 20
    found = _replay(rows, protocols, reference, known={before})
    assert all(n >= 20 for n, _ in found), [(n, f.message) for n, f in found if n < 20]
    new = [(n, f) for n, f in found if f.kind == "new_protocol"]
    assert [(n, f.protocol) for n, f in new] == [(20, after)]
    shifts = [(n, f) for n, f in found if f.kind == "shift"]
    assert shifts and min(n for n, _ in shifts) == 20 + WINDOW - 1
    assert {f.statistic for _, f in shifts} >= {"noise_hu", "noise_correlation"}
    noise = next(f for _, f in shifts if f.statistic == "noise_hu")
    assert noise.detail["median_recent"] > 2 * noise.detail["median_reference"]
    assert noise.detail["p_value"] < 1e-4


def test_the_same_header_with_other_images_is_a_shift_against_the_protocol_s_own_start(stream):
    _, rows = stream
    protocol = protocol_key(scanner="Acme", kernel="STANDARD", slice_thickness_mm=2.0)
    # No reference from the model: only the protocol's own first studies can tell.
    found = _replay(rows, [protocol] * 40, reference=None, known={protocol})
    assert found, "the change was not found"
    assert all(n >= 20 for n, _ in found)
    first = min(n for n, _ in found)
    assert first <= 20 + WINDOW - 1
    assert {f.reference for _, f in found} == {f"this protocol's first {WINDOW} studies"}


def test_a_stream_that_does_not_change_raises_nothing(stream):
    reference, rows = stream
    protocol = protocol_key(scanner="Acme", kernel="STANDARD", slice_thickness_mm=2.0)
    steady = rows[:20] + [flat_statistics(*statistics(2000 + n, BEFORE)) for n in range(20)]
    assert _replay(steady, [protocol] * 40, reference, known={protocol}) == []
