"""REST API of a radiologist's corrections: add a missed lesion with one click
(``POST /api/v1/studies/{study_instance_uid}/lesions/``), replace a lesion's mask at
one study (``PUT /api/v1/measurements/{id}/mask``) and file a lesion under another
organ (``PUT /api/v1/lesions/{id}/organ``). Each goes through a review service
(`analytics.lesions.review.additions`, `.masks`, `.organ`), which recomputes tracking,
responses and risk in one transaction and records a `ReviewEvent`; each call is also
audited.

A click may be given in the study's own LPS mm, or in the baseline's LPS mm with the
registration that shows the study on the baseline's grid: the viewer's follow-up pane,
whose deformable (B-spline) registration no 4x4 matrix in the browser can follow, sends
it so, and it is carried to the study here through the registration's full transform
(`analytics.lesions.tracking.transforms`), as the pane's image was."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
from django.conf import settings
from django.shortcuts import get_object_or_404
from django.urls import re_path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics.lesions.review.additions import lesion_add_at_seed
from analytics.lesions.review.common import ReviewError
from analytics.lesions.review.masks import mask_from_nifti, mask_from_runs, measurement_mask_replace
from analytics.lesions.review.organ import lesion_organ_set
from analytics.lesions.serializers import LesionMeasurementSerializer
from analytics.lesions.tracking.transforms import registration_mapping
from imaging.models import Lesion, LesionMeasurement, Registration, Study
from patients.audit import audit_record
from radtrack.api.base import (
    ID_PATTERN,
    DetailSerializer,
    HasViewPermissions,
    UploadTooLarge,
    request_content_length,
    upload_limit_message,
)

_READ = ("patients.view_patient", "imaging.view_lesionmeasurement")
#: A Study Instance UID in a path: DICOM UID characters (PS3.5 9.1), at most 64.
UID_PATTERN = r"[0-9][0-9.]{0,63}"


class NiftiParser(BaseParser):
    """A NIfTI-1 file as the body (.nii, or gzip-compressed .nii.gz), up to the upload limit."""

    media_type = "application/octet-stream"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        limit = settings.RADTRACK_MAX_UPLOAD_BYTES
        chunks, total = [], 0
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise UploadTooLarge(upload_limit_message())
            chunks.append(chunk)
        return b"".join(chunks)


class GzipNiftiParser(NiftiParser):
    media_type = "application/gzip"


class _Point(serializers.ListField):
    def __init__(self, **kwargs):
        super().__init__(child=serializers.FloatField(), min_length=3, max_length=3, **kwargs)


#: The frames a click may be given in: the study's own LPS mm, or the LPS mm of the
#: baseline (the fixed series of ``registration``, which carries it to the study).
SEED_FRAMES = [
    ("study", "the study's own LPS mm"),
    ("baseline", "the baseline's LPS mm, carried to the study through `registration`"),
]


class LesionAddSerializer(serializers.Serializer):
    seed_lps_mm = _Point(
        help_text="the click: [x, y, z] in LPS mm of the frame `seed_frame` names (by "
        "default the study's own)"
    )
    seed_frame = serializers.ChoiceField(
        choices=SEED_FRAMES,
        default="study",
        help_text="study (default): `seed_lps_mm` and `box_lps_mm` are in the study's own "
        "LPS mm; baseline: they are in the baseline's LPS mm (a click on the study shown on "
        "the baseline's grid), carried to the study through `registration`'s full "
        "transform, its B-spline included",
    )
    registration = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        required=False,
        allow_null=True,
        help_text="with seed_frame baseline (and only then): the id of the registration of "
        "this study to its patient's baseline that the click was shown through",
    )
    organ = serializers.ChoiceField(
        choices=Lesion.Organ.choices,
        required=False,
        help_text="default: read from the tissue around the lesion (lung, liver, other)",
    )
    box_lps_mm = serializers.ListField(
        child=_Point(),
        min_length=2,
        max_length=2,
        required=False,
        help_text="two corners [[x0, y0, z0], [x1, y1, z1]] bounding the lesion (LPS mm, "
        "in the frame `seed_frame` names)",
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = attrs.get("registration") is not None
        if attrs["seed_frame"] == "baseline" and not given:
            raise serializers.ValidationError(
                {
                    "registration": "required with seed_frame baseline: the registration "
                    "that carries the click from the baseline to this study"
                }
            )
        if attrs["seed_frame"] == "study" and given:
            raise serializers.ValidationError(
                {
                    "registration": "only with seed_frame baseline: a click in the study's "
                    "own LPS mm needs no registration"
                }
            )
        return attrs


class StudyLesionSerializer(serializers.Serializer):
    study_instance_uid = serializers.CharField()
    study_date = serializers.DateField(allow_null=True)
    status = serializers.ChoiceField(
        choices=["added", "propagated", "linked", "not_found", "not_searched"],
        help_text="added (at the click), propagated (found by propagation, awaiting "
        "review), linked (the segmenter had found it), not_found, not_searched",
    )
    status_text = serializers.CharField()
    reason = serializers.CharField(help_text="why it was not found (empty when found)")
    measurement_id = serializers.IntegerField(allow_null=True)
    review_state = serializers.CharField(allow_null=True)
    volume_ml = serializers.FloatField(allow_null=True, help_text="null when not found")
    longest_diameter_mm = serializers.FloatField(allow_null=True)
    short_axis_mm = serializers.FloatField(allow_null=True)
    centroid_lps_mm = serializers.ListField(child=serializers.FloatField(), allow_null=True)
    searched_at_lps_mm = serializers.ListField(child=serializers.FloatField(), allow_null=True)


class LesionAddedSerializer(serializers.Serializer):
    lesion_id = serializers.IntegerField()
    tracking_uid = serializers.CharField(help_text="DICOM Tracking UID (0062,0021)")
    label = serializers.CharField()
    organ = serializers.CharField()
    review_event = serializers.IntegerField()
    seed_lps_mm = serializers.ListField(
        child=serializers.FloatField(),
        help_text="where the click was segmented: the study's own LPS mm (carried there "
        "through the registration when given in the baseline's frame)",
    )
    measurements = StudyLesionSerializer(many=True)


class _Reviewing(APIView):
    permission_classes = [IsAuthenticated, HasViewPermissions]
    required_permissions = _READ

    def _refused(self, error: ReviewError) -> Response:
        return Response({"detail": str(error)}, status=status.HTTP_400_BAD_REQUEST)


class StudyLesionAddView(_Reviewing):
    """Add a lesion the segmenter missed, at one click, and follow it through the studies."""

    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="study_lesion_add",
        summary="Add a missed lesion with one click",
        description=(
            "Segments the lesion at `seed_lps_mm` (the study's own LPS mm; `box_lps_mm` "
            "bounds it) by click-guided region growing, measures it like every lesion, "
            "then looks for it at every other study of the patient around the click "
            "mapped through the registrations, links every sighting to one identity "
            "(one Tracking UID), marks the propagated ones awaiting review, and "
            "recomputes tracking, responses and risk. A study where it is not found says "
            "so (status not_found, values null), never 0 mm. A click on the study shown "
            "on the baseline's grid is given in the baseline's LPS mm with "
            "`seed_frame` baseline and the `registration` it was shown through (of this "
            "study to another study of its patient, else 400): it is carried to the study "
            "through that registration's full transform, B-spline included, which no "
            "4x4 matrix holds. Needs the radiologist role."
        ),
        request=LesionAddSerializer,
        responses={
            201: LesionAddedSerializer,
            400: OpenApiResponse(DetailSerializer, "nothing to segment there, or a bad field"),
            404: OpenApiResponse(DetailSerializer, "no such study"),
        },
        tags=["imaging"],
    )
    def post(self, request: Request, study_instance_uid: str) -> Response:
        study = get_object_or_404(Study, study_instance_uid=study_instance_uid)
        body = LesionAddSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            seed, box = _click_in_study(
                study=study,
                seed_lps_mm=data["seed_lps_mm"],
                box_lps_mm=data.get("box_lps_mm"),
                registration_pk=data.get("registration"),
            )
            added = lesion_add_at_seed(
                user=request.user,
                study=study,
                seed_lps_mm=seed,
                organ=data.get("organ"),
                box_lps_mm=box,
                reason=data.get("reason", ""),
            )
        except ReviewError as error:
            return self._refused(error)
        audit_record(
            request=request,
            action="api.lesion.add",
            object=f"study {study.pk} lesion {added.lesion.pk}",
            patient=study.patient_id,
        )
        answer = {
            "lesion_id": added.lesion.pk,
            "tracking_uid": added.lesion.tracking_uid,
            "label": added.lesion.label,
            "organ": added.lesion.organ,
            "review_event": added.event.pk,
            "seed_lps_mm": seed,
            "measurements": added.studies,
        }
        return Response(LesionAddedSerializer(answer).data, status=status.HTTP_201_CREATED)


def _click_in_study(
    *,
    study: Study,
    seed_lps_mm: list[float],
    box_lps_mm: list[list[float]] | None,
    registration_pk: int | None,
) -> tuple[list[float], list[list[float]] | None]:
    """A click (and its box) in ``study``'s own LPS mm.

    Without ``registration_pk`` they are already there. With it they are in the LPS mm of
    the registration's fixed series (the baseline), and are carried to the study through
    its full stored transform (`registration_mapping(...).from_baseline`, B-spline
    included): the image the viewer showed on the baseline's grid was resampled through
    it, so the click lands on the voxel the radiologist saw. The box's eight corners are
    carried and bounded again (a box in LPS mm stays one). The registration must be a
    usable one of this study's series to a series of the same patient, else
    `ReviewError` naming the field.
    """
    if registration_pk is None:
        return list(seed_lps_mm), box_lps_mm
    if not np.all(np.isfinite(seed_lps_mm)) or not np.all(np.isfinite(box_lps_mm or [])):
        raise ReviewError("seed_lps_mm, box_lps_mm: finite numbers in LPS mm only")
    registration = (
        Registration.objects.select_related("moving_series", "fixed_series__study")
        .filter(pk=registration_pk)
        .first()
    )
    if (
        registration is None
        or registration.moving_series.study_id != study.pk
        or registration.fixed_series.study.patient_id != study.patient_id
    ):
        raise ReviewError(
            f"registration: {registration_pk} is no registration of this study to another "
            "study of its patient"
        )
    if registration.failed:
        raise ReviewError(f"registration: {registration_pk} failed; it places nothing")
    mapping = registration_mapping(registration)
    seed = np.asarray(mapping.from_baseline(np.asarray(seed_lps_mm, dtype=float)), dtype=float)
    if box_lps_mm is None:
        return seed.reshape(3).tolist(), None
    lo, hi = np.min(box_lps_mm, axis=0), np.max(box_lps_mm, axis=0)
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    carried = np.asarray(mapping.from_baseline(corners), dtype=float).reshape(-1, 3)
    box = [carried.min(axis=0).tolist(), carried.max(axis=0).tolist()]
    return seed.reshape(3).tolist(), box


class MaskVersionSerializer(serializers.Serializer):
    segmentation = serializers.IntegerField()
    made_by = serializers.CharField(help_text="the radiologist, or the model's name")
    at = serializers.DateTimeField()
    action = serializers.CharField(help_text="automated, add, propagate or mask_edit")


class MeasurementMaskView(_Reviewing):
    """Replace a lesion's mask at one study with an edited one."""

    parser_classes = [NiftiParser, GzipNiftiParser, JSONParser]

    @extend_schema(
        operation_id="measurement_mask_replace",
        summary="Replace a lesion's mask at one study",
        description=(
            "The body is the edited mask on the study's own grid: a NIfTI-1 file "
            "(`application/octet-stream` or `application/gzip`; voxels above 0 are in "
            'the mask) or run-length encoding (`application/json`: `{"shape_ijk": [ni, '
            'nj, nk], "runs": [[start, length], ...]}`, start the flat index i + ni * '
            "(j + nj * k)). A mask of another shape or geometry is refused (400, which "
            "and by how much). The lesion is re-measured from the mask, the automated "
            "mask and every earlier edit kept as versions, and tracking, responses and "
            "risk recomputed. Answers the new measurement. Needs the radiologist role."
        ),
        parameters=[
            OpenApiParameter(
                "reason", str, description="why the mask was edited (kept in the review record)"
            )
        ],
        request={
            "application/octet-stream": OpenApiTypes.BINARY,
            "application/gzip": OpenApiTypes.BINARY,
            "application/json": OpenApiTypes.OBJECT,
        },
        responses={
            200: LesionMeasurementSerializer,
            400: OpenApiResponse(DetailSerializer, "wrong shape or geometry, or an empty mask"),
            404: OpenApiResponse(DetailSerializer, "no such measurement"),
            413: OpenApiResponse(DetailSerializer, "the request is over the size limit"),
        },
        tags=["imaging"],
    )
    def put(self, request: Request, pk: int) -> Response:
        if request_content_length(request) > settings.RADTRACK_MAX_UPLOAD_BYTES:
            raise UploadTooLarge(upload_limit_message(request_content_length(request)))
        measurement = get_object_or_404(
            LesionMeasurement.objects.select_related("lesion", "study"), pk=pk
        )
        try:
            if isinstance(request.data, bytes | bytearray):
                mask = mask_from_nifti(bytes(request.data))
            else:
                mask = mask_from_runs(_json_object(request.data))
            edit = measurement_mask_replace(
                user=request.user,
                measurement=measurement,
                mask=mask,
                reason=str(request.query_params.get("reason", ""))[:500],
            )
        except ReviewError as error:
            return self._refused(error)
        audit_record(
            request=request,
            action="api.measurement.mask",
            object=f"measurement {edit.measurement.pk}",
            patient=measurement.lesion.patient_id,
        )
        data = dict(LesionMeasurementSerializer(edit.measurement).data)
        data["mask_versions"] = MaskVersionSerializer(edit.versions, many=True).data
        data["review_event"] = edit.event.pk
        return Response(data)


class LesionOrganSerializer(serializers.Serializer):
    organ = serializers.ChoiceField(
        choices=Lesion.Organ.choices, help_text="the organ to file it under"
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


class LesionOrganChangedSerializer(serializers.Serializer):
    lesion_id = serializers.IntegerField()
    tracking_uid = serializers.CharField(help_text="unchanged: the same lesion")
    label = serializers.CharField(help_text="its label in the new organ")
    organ = serializers.CharField()
    review_event = serializers.IntegerField()
    segmentation_versions = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="the segmentation versions made, one per study where it has a mask",
    )


class LesionOrganView(_Reviewing):
    """File a lesion under another organ at every study."""

    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="lesion_organ_set",
        summary="File a lesion under another organ",
        description=(
            "The lesion keeps its Tracking UID and takes a label in the new organ; each "
            "study where it has a mask gets a new segmentation version saying who "
            "changed the organ and when (the earlier versions stay), and tracking, "
            "responses and risk are recomputed. A new run of the model keeps the "
            "choice. Needs the radiologist role."
        ),
        request=LesionOrganSerializer,
        responses={
            200: LesionOrganChangedSerializer,
            400: OpenApiResponse(DetailSerializer, "the same organ, or a bad field"),
            404: OpenApiResponse(DetailSerializer, "no such lesion"),
        },
        tags=["imaging"],
    )
    def put(self, request: Request, pk: int) -> Response:
        lesion = get_object_or_404(Lesion, pk=pk)
        body = LesionOrganSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            changed = lesion_organ_set(
                user=request.user,
                lesion=lesion,
                organ=body.validated_data["organ"],
                reason=body.validated_data.get("reason", ""),
            )
        except ReviewError as error:
            return self._refused(error)
        audit_record(
            request=request,
            action="api.lesion.organ",
            object=f"lesion {lesion.pk}",
            patient=lesion.patient_id,
        )
        answer = {
            "lesion_id": changed.lesion.pk,
            "tracking_uid": changed.lesion.tracking_uid,
            "label": changed.lesion.label,
            "organ": changed.lesion.organ,
            "review_event": changed.event.pk,
            "segmentation_versions": [v.pk for v in changed.versions],
        }
        return Response(LesionOrganChangedSerializer(answer).data)


def _json_object(data) -> object:
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            raise ReviewError("mask: the JSON body cannot be read") from None
    return data


urlpatterns = [
    re_path(
        rf"^studies/(?P<study_instance_uid>{UID_PATTERN})/lesions/$",
        StudyLesionAddView.as_view(),
        name="api-study-lesion-add",
    ),
    re_path(
        rf"^measurements/(?P<pk>{ID_PATTERN})/mask/?$",
        MeasurementMaskView.as_view(),
        name="api-measurement-mask",
    ),
    re_path(
        rf"^lesions/(?P<pk>{ID_PATTERN})/organ/?$",
        LesionOrganView.as_view(),
        name="api-lesion-organ",
    ),
]
