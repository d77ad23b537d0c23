"""A lesion cut off by the edge of what was imaged (the first or last slice of the scanned
range, the in-plane field of view, or pixels outside the reconstructed field of view) is
measured with the edges it reaches, so that its cut size is never read as its size; and
partial-volume volumetry does not count air beside a lesion as lesion."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from imaging.core.dicom.volume import series_volume
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.edges import (
    EDGE_FIELD_OF_VIEW,
    EDGE_PADDING,
    EDGE_SCAN_END,
    EDGE_SCAN_START,
    lesion_edges,
)
from imaging.core.segmentation.lesions import study_around
from imaging.core.segmentation.measure import LesionMeasurement, lesions_measure
from imaging.core.segmentation.partial_volume import partial_volume_measure
from imaging.core.segmentation.postprocess import LesionCandidate
from imaging.pipeline.storage import candidate_entry
from tests.imaging.core.test_dicom_volume import attrs
from tests.imaging.core.test_measure import occupancy_on

CENTRE = np.array([30.0, 30.0, 30.0])
RADIUS_MM = 15.0  # a 30 mm lesion
SPHERE_ML = 4 / 3 * np.pi * RADIUS_MM**3 / 1000


def _candidate(mask: np.ndarray) -> LesionCandidate:
    nz = np.nonzero(mask)
    return LesionCandidate(1, "liver", int(mask.sum()), 0.0, 0.95, 0.9,
                           tuple((int(x.min()), int(x.max()) + 1) for x in nz))  # fmt: skip


def _measure(
    shape_kji, *, scanned: Volume | None = None, study: Volume | None = None
) -> LesionMeasurement:
    """The 30 mm lesion at `CENTRE` measured on a 1.5 mm grid of ``shape_kji`` from 0."""
    grid = Volume(np.zeros(shape_kji, np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    probability = occupancy_on(grid, semi_axes_mm=(RADIUS_MM,) * 3, centre_lps_mm=CENTRE,
                               supersample=2)  # fmt: skip
    mask = (probability.array >= 0.5).astype(np.uint16)
    (measured,) = lesions_measure(
        lesion_probability=probability,
        candidate_mask=grid.with_array(mask, kind="label"),
        candidates=[_candidate(mask)],
        study=study,
        scanned=scanned,
    )
    return measured


# --------------------------------------------------------------------------- edges
def test_a_lesion_inside_the_scan_reaches_no_edge():
    measured = _measure((40, 40, 40))

    assert measured.edges_reached == ()
    assert measured.longest_axial_diameter_mm == pytest.approx(30, abs=1)
    assert candidate_entry(measured)["edges_reached"] == []


@pytest.mark.parametrize(
    ("shape_kji", "origin", "edges"),
    [
        # the scanned range ends 9 mm short of the lesion's centre (z 0..21 mm)
        ((15, 40, 40), (0.0, 0.0, 0.0), (EDGE_SCAN_END,)),
        # it starts 6 mm above the centre (z 36..94.5 mm)
        ((40, 40, 40), (0.0, 0.0, 36.0), (EDGE_SCAN_START,)),
        # the in-plane field of view ends 3 mm short of the centre (x 0..25.5 mm)
        ((40, 40, 18), (0.0, 0.0, 0.0), (EDGE_FIELD_OF_VIEW,)),
    ],
    ids=["last-slice", "first-slice", "field-of-view"],
)
def test_a_lesion_cut_by_the_scan_says_which_edge_it_reaches(shape_kji, origin, edges):
    grid = Volume(np.zeros(shape_kji, np.float32), (1.5,) * 3, origin)
    probability = occupancy_on(grid, semi_axes_mm=(RADIUS_MM,) * 3, centre_lps_mm=CENTRE,
                               supersample=2)  # fmt: skip
    mask = (probability.array >= 0.5).astype(np.uint16)
    (measured,) = lesions_measure(
        lesion_probability=probability,
        candidate_mask=grid.with_array(mask, kind="label"),
        candidates=[_candidate(mask)],
    )

    assert measured.edges_reached == edges
    assert candidate_entry(measured)["edges_reached"] == list(edges)
    # what was measured is only the part imaged: far below the lesion's size
    assert measured.volume_ml < 0.9 * SPHERE_ML


def test_the_edges_are_those_of_the_scan_not_of_the_part_measured():
    # The pipeline measures on a box of the study around the lesions (`study_around`):
    # the box's sides are not edges, the scan's are.
    whole = Volume(np.full((40, 40, 40), 100.0, np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    box = Volume(np.zeros((20, 20, 20), np.float32), (1.5,) * 3, (16.5, 16.5, 16.5))
    probability = occupancy_on(box, semi_axes_mm=(RADIUS_MM,) * 3, centre_lps_mm=CENTRE,
                               supersample=2)  # fmt: skip
    mask = (probability.array >= 0.5).astype(np.uint16)
    lesion = box.with_array(mask, kind="label")

    assert lesion_edges(lesion=lesion, scanned=box) == (
        EDGE_SCAN_START,
        EDGE_SCAN_END,
        EDGE_FIELD_OF_VIEW,
    )
    assert lesion_edges(lesion=lesion, scanned=whole) == ()
    (measured,) = lesions_measure(
        lesion_probability=probability,
        candidate_mask=lesion,
        candidates=[_candidate(mask)],
        scanned=whole,
    )
    assert measured.edges_reached == ()


def test_thin_slices_edge_is_reached_from_a_coarser_model_grid():
    # The scan has 0.7 mm slices ending at z 16.1 mm; the lesion's voxels on the 1.5 mm
    # model grid reach past it.
    scanned = Volume(np.zeros((24, 40, 40), np.float32), (1.5, 1.5, 0.7), (0.0, 0.0, 0.0))
    model = Volume(np.zeros((12, 40, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    probability = occupancy_on(model, semi_axes_mm=(RADIUS_MM,) * 3, centre_lps_mm=CENTRE,
                               supersample=2)  # fmt: skip
    lesion = model.with_array((probability.array >= 0.5).astype(np.uint8), kind="label")

    assert lesion_edges(lesion=lesion, scanned=scanned) == (EDGE_SCAN_END,)


def test_a_lesion_touching_padding_reaches_the_field_of_view():
    # Pixels outside the reconstructed field of view (x < 21 mm) read as air, as air
    # next to a lesion would; only the padding mask tells them apart.
    padding = np.zeros((40, 40, 40), bool)
    padding[:, :, :14] = True  # x 0..19.5 mm; the lesion starts at x 15 mm, cut there
    scanned = Volume(np.zeros((40, 40, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0),
                     padding=padding)  # fmt: skip
    air_only = Volume(np.zeros((40, 40, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    grid = Volume(np.zeros((40, 40, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    occupancy = occupancy_on(grid, semi_axes_mm=(RADIUS_MM,) * 3, centre_lps_mm=CENTRE,
                             supersample=2).array  # fmt: skip
    visible = np.where(padding, 0.0, occupancy).astype(np.float32)
    mask = (visible >= 0.5).astype(np.uint16)

    def measured_with(scan: Volume) -> LesionMeasurement:
        (out,) = lesions_measure(
            lesion_probability=grid.with_array(visible),
            candidate_mask=grid.with_array(mask, kind="label"),
            candidates=[_candidate(mask)],
            scanned=scan,
        )
        return out

    assert measured_with(scanned).edges_reached == (EDGE_PADDING,)
    assert measured_with(air_only).edges_reached == ()


def test_padding_far_from_the_lesion_is_not_an_edge():
    padding = np.zeros((40, 40, 40), bool)
    padding[:, :, :8] = True  # x < 12 mm; the lesion starts at 15 mm
    scanned = Volume(np.zeros((40, 40, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0),
                     padding=padding)  # fmt: skip

    assert _measure((40, 40, 40), scanned=scanned).edges_reached == ()


def test_the_box_around_the_lesions_keeps_the_padding():
    padding = np.zeros((40, 40, 40), bool)
    padding[:, :, :5] = True
    study = Volume(np.zeros((40, 40, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0),
                   padding=padding)  # fmt: skip
    mask = np.zeros((40, 40, 40), np.uint8)
    mask[18:22, 18:22, 8:12] = 1

    around = study_around(study=study, mask=study.with_array(mask, kind="label"), margin_mm=3)

    i, j, k = np.rint(study.lps_to_index(np.asarray(around.origin_mm))).astype(int)
    n_k, n_j, n_i = around.array.shape
    assert around.padding is not None
    np.testing.assert_array_equal(around.padding, padding[k : k + n_k, j : j + n_j, i : i + n_i])
    assert around.padding.any()


# --------------------------------------------------------------------------- DICOM
def _padded_series(tmp_path, *, pad_columns: int):
    """Eight 1 mm slices of 100 HU whose first ``pad_columns`` columns are Pixel Padding
    (stored 3000, which would read 1976 HU), and one column of real air beside them."""
    from imaging.core.dicom.write import ct_series_write

    volume = Volume(np.full((8, 16, 20), 100.0, np.float32), (1.0,) * 3, (0.0, 0.0, 0.0))
    paths = ct_series_write(volume, tmp_path, attrs())
    for path in paths:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.copy()
        intercept = float(ds.RescaleIntercept)
        stored[:, pad_columns] = np.uint16(-1000 - intercept)  # real air, not padding
        stored[:, :pad_columns] = 3000
        ds.PixelData = stored.tobytes()
        ds.add_new(0x00280120, "US", 3000)  # Pixel Padding Value
        ds.save_as(path, enforce_file_format=True)
    return paths


def test_pixel_padding_reads_as_air_and_is_kept_as_not_imaged(tmp_path):
    volume = series_volume(sources=_padded_series(tmp_path, pad_columns=4)).volume

    assert volume.padding is not None
    assert volume.padding[:, :, :4].all() and not volume.padding[:, :, 4:].any()
    # the segmenter sees air there, as before
    np.testing.assert_array_equal(volume.array[:, :, :4], -1024.0)
    np.testing.assert_array_equal(volume.array[:, :, 4], -1000.0)


def test_a_series_without_padding_has_no_padding_mask(tmp_path):
    from imaging.core.dicom.write import ct_series_write

    volume = Volume(np.full((4, 8, 8), 100.0, np.float32), (1.0,) * 3, (0.0, 0.0, 0.0))

    assert series_volume(sources=ct_series_write(volume, tmp_path, attrs())).volume.padding is None


def test_padding_is_carried_through_resampling_of_a_missing_slice(tmp_path):
    paths = _padded_series(tmp_path, pad_columns=3)
    paths[3].unlink()  # a gap: the stack is resampled onto a regular grid
    result = series_volume(sources=[p for p in paths if p.exists()])

    assert result.resampled
    assert result.volume.padding is not None
    assert result.volume.padding.shape == result.volume.array.shape
    assert result.volume.padding[:, :, :3].all() and not result.volume.padding[:, :, 4:].any()


# --------------------------------------------------------------------------- air and volume
def _beside(air_hu: float | None, *, padded_below_x_mm: float | None = None):
    """A 10 mm hypodense liver lesion (40 HU in 100 HU liver, 1.5 mm voxels) whose 3 mm
    region reaches ``air_hu`` (x < 20 mm) or padding (x < ``padded_below_x_mm``)."""
    rng = np.random.default_rng(0)
    grid = Volume(np.zeros((30, 40, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    occupancy = occupancy_on(grid, semi_axes_mm=(10, 10, 10),
                             centre_lps_mm=np.array([30.0, 30.0, 22.0]), supersample=2).array  # fmt: skip
    x = np.arange(40) * 1.5
    hu = 100 - 60 * occupancy + rng.normal(0, 5, occupancy.shape)
    padding = None
    if air_hu is not None:
        hu = np.where(np.broadcast_to(x < 20.0, hu.shape), air_hu, hu)
    if padded_below_x_mm is not None:
        padding = np.broadcast_to(x < padded_below_x_mm, hu.shape).copy()
        hu = np.where(padding, -1024.0, hu)
    mask = (occupancy >= 0.5).astype(np.uint16)
    (measured,) = lesions_measure(
        lesion_probability=grid.with_array(occupancy.astype(np.float32)),
        candidate_mask=grid.with_array(mask, kind="label"),
        candidates=[_candidate(mask)],
        study=Volume(hu.astype(np.float32), (1.5,) * 3, (0.0, 0.0, 0.0), padding=padding),
    )
    return measured


@pytest.mark.parametrize("air_hu", [-1024.0, -850.0], ids=["outside-the-body", "lung"])
def test_air_beside_a_hypodense_lesion_is_not_counted_as_lesion(air_hu):
    true_ml = 4 / 3 * np.pi * 1000 / 1000

    measured = _beside(air_hu)

    # Before: each air voxel of the region counted as two voxels of lesion (4.73 ml).
    assert measured.volume_ml == pytest.approx(true_ml, rel=0.03)
    assert measured.volume_method == "isosurface"


def test_padding_beside_a_lesion_is_not_counted_as_lesion():
    true_ml = 4 / 3 * np.pi * 1000 / 1000

    measured = _beside(None, padded_below_x_mm=20.0)

    assert measured.volume_ml == pytest.approx(true_ml, rel=0.03)
    assert measured.volume_method == "isosurface"


def test_a_lesion_away_from_air_keeps_partial_volume_volumetry():
    measured = _beside(None)

    assert measured.volume_method == "partial_volume"
    assert measured.volume_ml == pytest.approx(4 / 3 * np.pi, rel=0.03)


def test_pixels_marked_not_imaged_stop_partial_volume_whatever_they_read():
    # A padded pixel interpolated with its neighbours need not read as air.
    hu = np.full((12, 12, 12), 100.0)
    inner = np.zeros(hu.shape, bool)
    inner[3:9, 3:9, 3:9] = True
    hu[inner] = 40.0
    region = np.zeros(hu.shape, bool)
    region[2:10, 2:10, 2:10] = True
    outside = np.zeros(hu.shape, bool)
    outside[:, :, 10:] = True
    args = dict(hu=hu, spacing_kji_mm=(1.5, 1.5, 1.5), region=region, inner=inner, others=region)

    assert partial_volume_measure(**args) is not None
    assert partial_volume_measure(**args, outside=outside) is None


def test_a_lung_nodule_beside_air_keeps_partial_volume_volumetry():
    # Its background is lung (-850 HU): air lies beyond the background and reads as none.
    rng = np.random.default_rng(1)
    grid = Volume(np.zeros((30, 40, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    occupancy = occupancy_on(grid, semi_axes_mm=(8, 8, 8),
                             centre_lps_mm=np.array([30.0, 30.0, 22.0]), supersample=2).array  # fmt: skip
    x = np.arange(40) * 1.5
    lung = np.where(np.broadcast_to(x < 20.0, occupancy.shape), -1000.0, -850.0)
    hu = lung + (0.0 - lung) * occupancy + rng.normal(0, 10, occupancy.shape)
    mask = (occupancy >= 0.5).astype(np.uint16)
    (measured,) = lesions_measure(
        lesion_probability=grid.with_array(occupancy.astype(np.float32)),
        candidate_mask=grid.with_array(mask, kind="label"),
        candidates=[_candidate(mask)],
        study=grid.with_array(hu.astype(np.float32)),
    )

    assert measured.volume_method == "partial_volume"
    assert measured.volume_ml == pytest.approx(4 / 3 * np.pi * 0.512, rel=0.05)
