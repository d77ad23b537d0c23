"""The side-by-side viewer, the image files it loads, and a radiologist's review actions.

Review forms post here and come back to the page they came from (``next``), with the
outcome as a message; every change goes through `analytics.lesions.review`, which
re-tracks the patient and recomputes responses and risk in one transaction. Every
page and image file served is written to the audit trail.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from analytics.lesions.corrections_viewer import correction_context, lesion_mask_path
from analytics.lesions.review.common import ReviewError
from analytics.lesions.review.findings import (
    lesion_add,
    measurement_gone,
    measurement_too_small,
    non_target_progression_decide,
    study_links_confirm,
)
from analytics.lesions.review.identities import lesion_merge, lesion_relink, lesion_split
from analytics.lesions.review.irecist import can_set_irecist, irecist_set
from analytics.lesions.review.measurements import (
    measurement_accept,
    measurement_override,
    measurement_reject,
)
from analytics.lesions.review.organ import lesion_organ_set
from analytics.lesions.review.targets import targets_set
from analytics.lesions.viewer import FILE_KINDS, ViewerFileMissing, viewer_build, viewer_file_path
from imaging.models import Lesion, LesionMeasurement, ReviewEvent, Study
from patients.audit import audit_record
from patients.models import Patient
from patients.permissions import can_review

WINDOW_PRESETS = (
    # (key, label, window width HU, window level HU): common CT display windows
    ("lung", "Lung", 1500, -600),
    ("soft", "Soft tissue", 400, 40),
    ("liver", "Liver", 150, 30),
    ("bone", "Bone", 1800, 400),
)


def _back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = fallback
    return HttpResponseRedirect(target)


def _viewer_url(patient_pk: int, study_pk: int | None = None) -> str:
    url = reverse("lesions:viewer", args=[patient_pk])
    return f"{url}?study={study_pk}" if study_pk else url


@require_GET
@login_required
@permission_required("patients.view_patient", raise_exception=True)
def viewer_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Baseline and follow-up side by side, the lesions, the responses, and review."""
    patient = get_object_or_404(Patient, pk=pk)
    study_pk = request.GET.get("study", "")
    if study_pk and not study_pk.isdigit():
        raise Http404("study must be a study number")
    try:
        viewer = viewer_build(patient=patient, follow_up_pk=int(study_pk) if study_pk else None)
    except Study.DoesNotExist as error:
        raise Http404(str(error)) from None
    audit_record(
        request=request,
        action="viewer.view",
        object=f"patient {patient.pk}"
        + (f" study {viewer.follow_up.study.pk}" if viewer.follow_up else ""),
        patient=patient,
    )
    files = {}
    for side, images in (("baseline", viewer.baseline), ("follow_up", viewer.follow_up)):
        if images is None:
            continue
        base = reverse("lesions:viewer-file", args=[images.study.pk, "volume"])
        files[side] = {
            kind: reverse("lesions:viewer-file", args=[images.study.pk, kind]) + "?grid=baseline"
            for kind, present in (
                ("volume", True),
                ("mask", images.has_mask),
                ("probability", images.has_probability),
            )
            if present
        }
        files[side]["own_grid_volume"] = base
    jumps = {
        f"{side}-{row.measurement.pk}": row.jump_ras_mm
        for side, rows in (("baseline", viewer.baseline_rows), ("follow_up", viewer.follow_up_rows))
        for row in rows
        if row.jump_ras_mm is not None
    }
    return render(
        request,
        "imaging/viewer.html",
        {
            "patient": patient,
            "viewer": viewer,
            "files": files,
            "jumps": jumps,
            "presets": WINDOW_PRESETS,
            "can_review": can_review(request.user),
            "organ_choices": Lesion.Organ.choices,
            "here": request.get_full_path(),
            "correction": correction_context(viewer=viewer)
            if viewer.baseline and can_review(request.user)
            else None,
        },
    )


@require_GET
@login_required
@permission_required("imaging.view_study", raise_exception=True)
def measurement_mask_view(request: HttpRequest, pk: int) -> FileResponse:
    """One lesion's mask at its study (NIfTI, 0/1, the study's own grid): the drawing
    the viewer edits with the brush and eraser."""
    measurement = get_object_or_404(
        LesionMeasurement.objects.select_related("lesion", "study"), pk=pk
    )
    try:
        path = lesion_mask_path(measurement=measurement)
    except ViewerFileMissing as error:
        raise Http404(str(error)) from None
    audit_record(
        request=request,
        action="images.view",
        object=f"measurement {measurement.pk} mask",
        patient=measurement.lesion.patient_id,
    )
    response = FileResponse(path.open("rb"), content_type="application/octet-stream")
    response["Content-Disposition"] = f'inline; filename="measurement{measurement.pk}-mask.nii.gz"'
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@login_required
@permission_required("imaging.view_study", raise_exception=True)
def viewer_file_view(request: HttpRequest, pk: int, kind: str) -> FileResponse:
    """A study's volume, lesion mask or probability map (NIfTI) for the viewer;
    ``?grid=baseline`` resamples a registered follow-up onto the baseline grid."""
    study = get_object_or_404(Study, pk=pk)
    if kind not in FILE_KINDS:
        raise Http404(f"kind must be one of {', '.join(FILE_KINDS)}")
    try:
        path = viewer_file_path(
            study=study, kind=kind, on_baseline_grid=request.GET.get("grid") == "baseline"
        )
    except ViewerFileMissing as error:
        raise Http404(str(error)) from None
    audit_record(
        request=request,
        action="images.view",
        object=f"study {study.pk} {kind}",
        patient=study.patient_id,
    )
    response = FileResponse(path.open("rb"), content_type="application/octet-stream")
    # NiiVue reads the format from the name; no patient data goes in it.
    response["Content-Disposition"] = f'inline; filename="study{study.pk}-{kind}.nii.gz"'
    response["Cache-Control"] = "private, no-store"
    return response


def _run(
    request: HttpRequest, fallback: str, action, *, allowed: bool | None = None, **kwargs
) -> HttpResponseRedirect:
    if not (can_review(request.user) if allowed is None else allowed):
        raise PermissionDenied("Your account may not review lesions.")
    try:
        event = action(user=request.user, **kwargs)
    except ReviewError as error:
        messages.error(request, f"Not saved: {error}")
        return _back(request, fallback)
    text = {
        "accept": "Accepted",
        "reject": "Rejected as a false positive",
        "override": "Override saved",
        "relink": "Relinked",
        "split": "Split off into a lesion of its own",
        "merge": "Merged",
        "targets": "Target lesions saved",
        "targets_automatic": "Targets returned to the RECIST rules",
        "gone": "Confirmed gone",
        "too_small": "Marked present but too small to measure (counts 5 mm)",
        "add": "Lesion measured by hand",
        "links_confirm": "Proposed links confirmed",
        "non_target_verdict": "Non-target verdict saved",
        "irecist": "iRECIST setting saved",
        "organ": "Filed under the new organ at every study",
    }[event.action]
    messages.success(request, f"{text}; responses and risk recomputed.")
    return _back(request, fallback)


def _measurement_or_message(request: HttpRequest, pk: int) -> LesionMeasurement | None:
    measurement = LesionMeasurement.objects.select_related("lesion", "study").filter(pk=pk).first()
    if measurement is None:
        messages.error(
            request,
            "Not saved: that measurement was rebuilt since the page was loaded (lesions are "
            "re-tracked after every review); review it again on the reloaded page.",
        )
    return measurement


@require_POST
@login_required
def measurement_review_view(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Accept, reject, override, relink (``lesion``) or split (``component_label``)."""
    if not can_review(request.user):
        raise PermissionDenied("Your account may not review lesions.")
    measurement = _measurement_or_message(request, pk)
    if measurement is None:
        return _back(request, reverse("patients:list"))
    fallback = _viewer_url(measurement.lesion.patient_id, measurement.study_id)
    action = request.POST.get("action", "")
    reason = request.POST.get("reason", "")
    if action == "accept":
        return _run(request, fallback, measurement_accept, measurement=measurement, reason=reason)
    if action == "reject":
        return _run(request, fallback, measurement_reject, measurement=measurement, reason=reason)
    if action == "gone":
        return _run(request, fallback, measurement_gone, measurement=measurement, reason=reason)
    if action == "too_small":
        return _run(
            request, fallback, measurement_too_small, measurement=measurement, reason=reason
        )
    if action == "override":
        return _run(
            request,
            fallback,
            measurement_override,
            measurement=measurement,
            reason=reason,
            volume_ml=request.POST.get("volume_ml"),
            longest_diameter_mm=request.POST.get("longest_diameter_mm"),
            short_axis_mm=request.POST.get("short_axis_mm"),
        )
    if action == "relink":
        lesion = Lesion.objects.filter(
            pk=_number(request.POST.get("lesion")), patient_id=measurement.lesion.patient_id
        ).first()
        if lesion is None:
            messages.error(request, "Not saved: lesion: choose one of this patient's lesions")
            return _back(request, fallback)
        return _run(
            request,
            fallback,
            lesion_relink,
            measurement=measurement,
            lesion=lesion,
            reason=reason,
        )
    if action == "split":
        component = request.POST.get("component_label", "")
        return _run(
            request,
            fallback,
            lesion_split,
            measurement=measurement,
            component_label=_number(component) if component else None,
            reason=reason,
        )
    messages.error(
        request,
        "Not saved: action: one of accept, reject, override, relink, split, gone, too_small",
    )
    return _back(request, fallback)


@require_POST
@login_required
def lesion_merge_view(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Merge lesion ``pk`` into the lesion named by ``into``."""
    if not can_review(request.user):
        raise PermissionDenied("Your account may not review lesions.")
    lesion = get_object_or_404(Lesion, pk=pk)
    fallback = _viewer_url(lesion.patient_id)
    into = Lesion.objects.filter(
        pk=_number(request.POST.get("into")), patient_id=lesion.patient_id
    ).first()
    if into is None:
        messages.error(request, "Not saved: into: choose one of this patient's lesions")
        return _back(request, fallback)
    return _run(
        request,
        fallback,
        lesion_merge,
        lesion=lesion,
        into=into,
        reason=request.POST.get("reason", ""),
    )


@require_POST
@login_required
def lesion_organ_view(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """File lesion ``pk`` under the posted ``organ`` at every study."""
    lesion = get_object_or_404(Lesion, pk=pk)
    return _run(
        request,
        _viewer_url(lesion.patient_id),
        _organ_set,
        lesion=lesion,
        organ=request.POST.get("organ", ""),
        reason=request.POST.get("reason", ""),
    )


def _organ_set(**kwargs) -> ReviewEvent:
    return lesion_organ_set(**kwargs).event


@require_POST
@login_required
def targets_view(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Set the target lesions to the ``lesion`` values posted (none: the RECIST rules)."""
    if not can_review(request.user):
        raise PermissionDenied("Your account may not review lesions.")
    patient = get_object_or_404(Patient, pk=pk)
    wanted = [_number(v) for v in request.POST.getlist("lesion")]
    lesions = list(Lesion.objects.filter(patient=patient, pk__in=wanted))
    if len(lesions) != len(set(wanted)):
        messages.error(request, "Not saved: lesion: choose only this patient's lesions")
        return _back(request, _viewer_url(patient.pk))
    return _run(
        request,
        _viewer_url(patient.pk),
        targets_set,
        patient=patient,
        lesions=lesions,
        reason=request.POST.get("reason", ""),
    )


@require_POST
@login_required
def lesion_add_view(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Measure a lesion by hand at the posted ``study``: a new one in ``organ`` (a lymph
    node by its short axis) or the posted ``lesion`` where it was not found."""
    patient = get_object_or_404(Patient, pk=pk)
    fallback = _viewer_url(patient.pk)
    study = Study.objects.filter(pk=_number(request.POST.get("study")), patient=patient).first()
    if study is None:
        messages.error(request, "Not saved: study: choose one of this patient's studies")
        return _back(request, fallback)
    lesion = None
    if request.POST.get("lesion"):
        lesion = Lesion.objects.filter(
            pk=_number(request.POST.get("lesion")), patient=patient
        ).first()
        if lesion is None:
            messages.error(request, "Not saved: lesion: choose one of this patient's lesions")
            return _back(request, fallback)
    return _run(
        request,
        fallback,
        lesion_add,
        study=study,
        organ=request.POST.get("organ", "") if lesion is None else lesion.organ,
        longest_diameter_mm=request.POST.get("longest_diameter_mm"),
        short_axis_mm=request.POST.get("short_axis_mm"),
        volume_ml=request.POST.get("volume_ml"),
        lesion=lesion,
        reason=request.POST.get("reason", ""),
    )


@require_POST
@login_required
def study_links_confirm_view(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Confirm the links proposed for a follow-up that could not be registered."""
    study = get_object_or_404(Study, pk=pk)
    return _run(
        request,
        _viewer_url(study.patient_id, study.pk),
        study_links_confirm,
        study=study,
        reason=request.POST.get("reason", ""),
    )


_VERDICTS = {"progression": True, "no_progression": False, "withdraw": None}


@require_POST
@login_required
def non_target_verdict_view(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Record (or withdraw) a radiologist's verdict on non-target progression."""
    study = get_object_or_404(Study, pk=pk)
    fallback = _viewer_url(study.patient_id, study.pk)
    verdict = request.POST.get("verdict", "")
    if verdict not in _VERDICTS:
        messages.error(request, "Not saved: verdict: one of progression, no_progression, withdraw")
        return _back(request, fallback)
    return _run(
        request,
        fallback,
        non_target_progression_decide,
        study=study,
        progression=_VERDICTS[verdict],
        reason=request.POST.get("reason", ""),
    )


@require_POST
@login_required
def irecist_view(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Apply iRECIST to a patient's responses (``enabled`` on) or stop (off)."""
    patient = get_object_or_404(Patient, pk=pk)
    enabled = request.POST.get("enabled", "")
    if enabled not in ("on", "off"):
        messages.error(request, "Not saved: enabled: on or off")
        return _back(request, _viewer_url(patient.pk))
    return _run(
        request,
        _viewer_url(patient.pk),
        irecist_set,
        allowed=can_set_irecist(request.user),
        patient=patient,
        enabled=enabled == "on",
        reason=request.POST.get("reason", ""),
    )


def _number(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
