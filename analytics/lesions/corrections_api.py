"""REST API of a radiologist's corrections: add a missed lesion with one click
(``POST /api/v1/studies/{study_instance_uid}/lesions/``), replace a lesion's mask at
one study (``PUT /api/v1/measurements/{id}/mask``) and file a lesion under another
organ (``PUT /api/v1/lesions/{id}/organ``). Each goes through a review service
(`analytics.lesions.review.additions`, `.masks`, `.organ`), which recomputes tracking,
responses and risk in one transaction and records a `ReviewEvent`; each call is also
audited."""

from __future__ import annotations

import json

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
from imaging.models import Lesion, LesionMeasurement, Study
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


class LesionAddSerializer(serializers.Serializer):
    seed_lps_mm = _Point(help_text="the click: [x, y, z] in the study's own LPS mm")
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
        help_text="two corners [[x0, y0, z0], [x1, y1, z1]] bounding the lesion (LPS mm)",
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


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
            "so (status not_found, values null), never 0 mm. Needs the radiologist role."
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
            added = lesion_add_at_seed(
                user=request.user,
                study=study,
                seed_lps_mm=data["seed_lps_mm"],
                organ=data.get("organ"),
                box_lps_mm=data.get("box_lps_mm"),
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
            "measurements": added.studies,
        }
        return Response(LesionAddedSerializer(answer).data, status=status.HTTP_201_CREATED)


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
