"""Writes of the model registry: register a version, promote it, roll back, retire; and
the active model, loaded once per worker process, for the pipeline.

The shipped weights (``imaging/weights``) become the first active version the first time
anything asks for the registry (`shipped_model_ensure`). A version is promoted only with
a validation report made against the model active at that moment on the locked set as it
is now (its definition, lock and site studies: `locked_set.identity_mismatch`), and only
when that report passed: it judged something, and found no regression beyond the margins
(`imaging.core.modelhub.compare`); promotion, refusal and rollback are `ModelEvent` rows and audit-trail entries.
Rows change inside transactions that lock the task's versions, so two promotions cannot
interleave, and the database allows one active version per task.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from imaging.core.modelhub.adapters import (
    description_build,
    model_inspect,
    model_load,
    model_smoke_test,
    radtrack_manifest,
)
from imaging.core.modelhub.conventions import (
    FORMATS,
    ModelDescription,
    ModelDescriptionError,
    ModelFile,
)
from imaging.core.modelhub.files import (
    model_digest,
    model_files_copy,
    model_files_describe,
    model_files_verify,
)
from imaging.core.segmentation.network import (
    MANIFEST_NAME,
    WEIGHTS_DIR,
    SegmenterError,
    VolumeSegmenter,
    file_sha256,
)
from imaging.modelhub.locked_set import SetIdentity, identity_mismatch, validation_set_identity
from imaging.modelhub.models import TASK_LESIONS, ModelEvent, SegmentationModel, ValidationReport
from imaging.store import data_dir, derived_local, derived_publish
from patients.audit import audit_record

logger = logging.getLogger(__name__)

MODELS_FOLDER = "models"


class RegistryError(Exception):
    """A registry action that cannot be done as asked (the message says why)."""


def model_root(model: SegmentationModel) -> Path:
    """Where a version's files are on this machine: its folder under the data folder,
    each file fetched first from the bucket on S3 when another machine registered it."""
    for f in model.files:
        try:
            derived_local(f"{model.path}/{f['path']}")
        except OSError as exc:
            raise SegmenterError(f"model {model.label}: {f['path']} cannot be read: {exc}") from exc
    return data_dir() / model.path


def _files_publish(relative: str, files: tuple[ModelFile, ...]) -> None:
    """Make a version's files readable by every machine (`imaging.store.derived_publish`)."""
    for f in files:
        derived_publish(f"{relative}/{f.path}")


def model_description(model: SegmentationModel) -> ModelDescription:
    return description_build(
        name=model.name, version=model.version, fmt=model.format, labels=model.labels,
        conventions=model.conventions, files=[ModelFile(**f) for f in model.files],
        sha256=model.sha256,
    )  # fmt: skip


def _actor(user: Any, username: str) -> tuple[Any, str]:
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    return user, (user.get_username() if user is not None else username)[:150]


def model_event_record(
    model: SegmentationModel, action: str, *, user: Any = None, username: str = "", reason: str = "",
    previous: SegmentationModel | None = None, report: ValidationReport | None = None,
    detail: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """One `ModelEvent` and the matching audit-trail entry (``model.<action>``)."""
    user, name = _actor(user, username)
    ModelEvent.objects.create(model=model, action=action, user=user, username=name, reason=reason,
                              previous_active=previous, report=report, detail=detail or {})  # fmt: skip
    audit_record(user=user, username=name, action=f"model.{action}", object=f"model {model.label}")


def cohort_training_sources(model: SegmentationModel) -> list[dict[str, Any]]:
    """The generated cohorts a RadTrack model's weights were trained on, up its lineage:
    its own manifest's, else those of the weights it was warm-started from (weights trained
    on fresh generated patches list no cohort of their own), else its parent's."""
    row: SegmentationModel | None = model
    while row is not None:
        data = row.training.get("manifest_training") or {}
        while data:
            if data.get("train"):
                return list(data["train"])
            data = (data.get("warm_start") or {}).get("data") or {}
        row = row.parent
    return []


# --------------------------------------------------------------------------- the shipped model
def _shipped_files() -> tuple[dict[str, Any], tuple[ModelFile, ...]]:
    """The shipped manifest, and its files: the weights and the manifest (the model card
    beside them is documentation and may change on its own)."""
    manifest = radtrack_manifest(WEIGHTS_DIR)
    files = tuple(
        ModelFile(name, file_sha256(WEIGHTS_DIR / name), (WEIGHTS_DIR / name).stat().st_size)
        for name in sorted([manifest["file"], MANIFEST_NAME])
    )
    return manifest, files


def _shipped_row(*, first: bool) -> SegmentationModel:
    """The shipped weights as a version, their files copied into the data store (so the
    version stays loadable when a later RadTrack ships other weights)."""
    manifest, files = _shipped_files()
    inspected = model_inspect(fmt="radtrack", root=WEIGHTS_DIR)
    relative = f"{MODELS_FOLDER}/{manifest['name']}/{manifest['version']}"
    target = data_dir() / relative
    if target.exists():
        try:
            model_files_verify(root=target, files=files)
        except ModelDescriptionError:
            shutil.rmtree(target)  # a copy left by an interrupted first run
    if not target.exists():
        model_files_copy(source=WEIGHTS_DIR, target=target, files=files)
    _files_publish(relative, files)
    conventions = description_build(name="x", version="x", fmt="radtrack", labels=inspected["labels"],
                                    conventions=inspected["conventions"]).conventions  # fmt: skip
    return SegmentationModel(
        task=TASK_LESIONS, name=manifest["name"], version=manifest["version"],
        format=SegmentationModel.Format.RADTRACK, path=relative,
        files=[f.as_json() for f in files], sha256=model_digest(files),
        labels={str(i): c for i, c in enumerate(inspected["labels"])},
        conventions=conventions.as_json(),
        status=SegmentationModel.Status.ACTIVE if first else SegmentationModel.Status.CANDIDATE,
        registered_by_name="radtrack", promoted_by_name="radtrack" if first else "",
        promoted_at=timezone.now() if first else None,
        training=_manifest_training(inspected),
        notes="The model shipped with RadTrack (imaging/weights), registered on first use"
        + ("." if first else ": a candidate until validated and promoted."),
    )  # fmt: skip


def shipped_model_ensure() -> SegmentationModel | None:
    """The active version, after registering the shipped weights when they are not yet in
    the registry: as the active version when the task has none at all, else as a
    candidate (new weights of a RadTrack upgrade go through validation and promotion like
    any other version). None when every version was retired by hand."""
    manifest = radtrack_manifest(WEIGHTS_DIR)
    versions = SegmentationModel.objects.filter(task=TASK_LESIONS)
    if not versions.filter(name=manifest["name"], version=manifest["version"]).exists():
        first = not versions.exists()
        try:
            with transaction.atomic():
                row = _shipped_row(first=first)
                row.save()
                reason = (
                    "the shipped model, active from the start"
                    if first
                    else "shipped with this RadTrack"
                )
                model_event_record(
                    row, ModelEvent.Action.REGISTER, username="radtrack", reason=reason
                )
        except IntegrityError:  # another process registered it at the same moment
            pass
    return versions.filter(status="active").first()


def active_model() -> SegmentationModel:
    """The active version of the lesion task (registering the shipped one on first use)."""
    active = shipped_model_ensure()
    if active is None:
        raise SegmenterError(
            "no segmentation model is active: promote one (manage.py model_promote)"
        )
    return active


_loaded: dict[tuple[int, str, str], VolumeSegmenter] = {}
_loaded_lock = threading.Lock()


def model_loaded(*, model: SegmentationModel, device: str) -> VolumeSegmenter:
    """``model`` loaded on ``device`` (files checked against their SHA-256), kept per process."""
    key = (model.pk, model.sha256, device)
    with _loaded_lock:
        if key not in _loaded:
            loaded = model_load(description=model_description(model), root=model_root(model),
                                device=device)  # fmt: skip
            for old in [k for k in _loaded if k[2] == device]:
                del _loaded[old]  # one version per device: the active one
            _loaded[key] = loaded
        return _loaded[key]


def active_segmenter(*, device: str) -> VolumeSegmenter:
    """The active version, loaded (what the pipeline segments with)."""
    return model_loaded(model=active_model(), device=device)


# --------------------------------------------------------------------------- register
def _checked_names(name: str, version: str) -> None:
    row = SegmentationModel(name=name, version=version, format="onnx", path="x", sha256="x",
                            labels={}, conventions={})  # fmt: skip
    try:
        row.clean_fields(exclude=["files", "labels", "conventions", "training",
                                  "reference_statistics", "notes", "parent"])  # fmt: skip
    except ValidationError as exc:
        raise RegistryError(
            "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
        ) from None
    if SegmentationModel.objects.filter(name=name, version=version).exists():
        raise RegistryError(f"{name}-{version} is already registered")


def _manifest_training(inspected: dict[str, Any]) -> dict[str, Any]:
    """The training record RadTrack weights carry in their manifest, as the shipped
    version keeps it; nothing for other formats."""
    found = inspected.get("manifest_training")
    return {"manifest_training": found} if found else {}


def model_register(
    *,
    source: Path,
    fmt: str,
    name: str | None = None,
    version: str | None = None,
    labels: Any = None,
    conventions: dict[str, Any] | None = None,
    user: Any = None,
    username: str = "",
    notes: str = "",
    parent: SegmentationModel | None = None,
    training: dict[str, Any] | None = None,
) -> SegmentationModel:
    """Register the model at ``source`` as a candidate: its files are described (SHA-256),
    copied into the data store, loaded and run once on a phantom (a label map that does
    not fit the outputs is refused here), then the row is written."""
    source = Path(source)
    if fmt not in FORMATS:
        raise RegistryError(f"--format must be one of {', '.join(FORMATS)}")
    # The shipped weights first: on a registry still empty they are the active version,
    # which a site's own model registered before anything else must not leave without one.
    shipped_model_ensure()
    try:
        inspected = model_inspect(fmt=fmt, root=source)
        name = name or inspected.get("name")
        version = version or inspected.get("version")
        if not name or not version:
            raise RegistryError("--name and --version are required for this format")
        _checked_names(name, version)
        labels = labels if labels is not None else inspected.get("labels")
        if labels is None:
            raise RegistryError(f"{fmt} models do not name their outputs: give --labels, e.g. "
                                '\'{"0": "background", "1": "liver", "2": "liver_lesion"}\'')  # fmt: skip
        merged = {**inspected.get("conventions", {}), **(conventions or {})}
        files = model_files_describe(root=source)
        description = description_build(name=name, version=version, fmt=fmt, labels=labels,
                                        conventions=merged, files=files, sha256=model_digest(files))  # fmt: skip
    except ModelDescriptionError as exc:
        raise RegistryError(str(exc)) from exc
    relative = f"{MODELS_FOLDER}/{name}/{version}"
    target = data_dir() / relative
    model_files_copy(source=source, target=target, files=files)
    _files_publish(relative, files)
    try:
        smoke = model_smoke_test(model_load(description=description, root=target, device="cpu"))
        with transaction.atomic():
            row = SegmentationModel.objects.create(
                task=TASK_LESIONS, name=name, version=version, format=fmt, path=relative,
                files=[f.as_json() for f in files], sha256=description.sha256,
                labels=description.labels.as_json(), conventions=description.conventions.as_json(),
                parent=parent, notes=notes,
                training=training or _manifest_training(inspected),
                registered_by=_actor(user, username)[0], registered_by_name=_actor(user, username)[1],
            )  # fmt: skip
            model_event_record(row, ModelEvent.Action.REGISTER, user=user, username=username,
                   detail={"source": str(source), "smoke_test": smoke})  # fmt: skip
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return row


# --------------------------------------------------------------------------- promote, roll back
def _locked_versions() -> list[SegmentationModel]:
    return list(
        SegmentationModel.objects.select_for_update().filter(task=TASK_LESIONS).order_by("pk")
    )


def promotion_check(
    *, model: SegmentationModel, active: SegmentationModel | None,
    identity: SetIdentity | None = None,
) -> ValidationReport:  # fmt: skip
    """The report that allows ``model`` to replace ``active``, or `RegistryError` saying why
    not (``identity``: the locked set now, `validation_set_identity`, read when not given)."""
    if active is not None and active.pk == model.pk:
        raise RegistryError(f"{model.label} is already the active model")
    report = model.reports.order_by("-created_at").first()
    if report is None:
        raise RegistryError(
            f"{model.label} has no validation report: run manage.py model_validate {model.label}"
        )
    if active is not None and report.compared_with_id != active.pk:
        against = report.compared_with.label if report.compared_with else "no model"
        raise RegistryError(f"{model.label}'s latest report compares it with {against}, but "
                            f"{active.label} is active now: validate it again")  # fmt: skip
    changed = identity_mismatch(report, identity or validation_set_identity())
    if changed is not None:
        raise RegistryError(f"{model.label}'s latest report is not on the locked validation set as "
                            f"it is now: {changed}; validation must be run again "
                            f"(manage.py model_validate {model.label})")  # fmt: skip
    if not report.passed:
        refusals = report.comparison.get("refusals", [])
        texts = [r["text"] for r in report.comparison.get("regressions", [])]
        if refusals:
            raise RegistryError(
                f"{model.label}'s report does not pass: {'; '.join(refusals + texts)}"
            )
        raise RegistryError(
            f"{model.label} regresses beyond the margins: {'; '.join(texts) or 'see its report'}"
        )
    return report


def model_promote(
    *, model: SegmentationModel, user: Any = None, username: str = "", reason: str = ""
) -> SegmentationModel:
    """Make ``model`` the active version (the one before retired), if its report allows it."""
    try:
        with transaction.atomic():
            versions = {m.pk: m for m in _locked_versions()}
            model = versions[model.pk]
            active = next((m for m in versions.values() if m.status == "active"), None)
            report = promotion_check(model=model, active=active)
            if active is not None:
                active.status = SegmentationModel.Status.RETIRED
                active.save(update_fields=["status"])
            _activate(model, user, username)
            model_event_record(model, ModelEvent.Action.PROMOTE, user=user, username=username, reason=reason,
                   previous=active, report=report)  # fmt: skip
            return model
    except RegistryError as exc:
        model_event_record(
            model, ModelEvent.Action.REFUSE, user=user, username=username, reason=str(exc)
        )
        raise


def _activate(model: SegmentationModel, user: Any, username: str) -> None:
    user, name = _actor(user, username)
    model.status = SegmentationModel.Status.ACTIVE
    model.promoted_by, model.promoted_by_name, model.promoted_at = user, name, timezone.now()
    model.save(update_fields=["status", "promoted_by", "promoted_by_name", "promoted_at"])


def model_rollback(*, user: Any = None, username: str = "", reason: str = "") -> SegmentationModel:
    """Restore, in one step, the version that was active before the current one was promoted."""
    with transaction.atomic():
        versions = {m.pk: m for m in _locked_versions()}
        active = next((m for m in versions.values() if m.status == "active"), None)
        if active is None:
            raise RegistryError("no model is active: nothing to roll back")
        promoted = (
            active.events.filter(action=ModelEvent.Action.PROMOTE).order_by("-at", "-pk").first()
        )
        if promoted is None or promoted.previous_active_id is None:
            raise RegistryError(
                f"{active.label} was not promoted over another version: nothing to roll back to"
            )
        previous = versions[promoted.previous_active_id]
        active.status = SegmentationModel.Status.RETIRED
        active.save(update_fields=["status"])
        _activate(previous, user, username)
        model_event_record(previous, ModelEvent.Action.ROLLBACK, user=user, username=username, reason=reason,
               previous=active)  # fmt: skip
        return previous


def model_retire(
    *, model: SegmentationModel, user: Any = None, username: str = "", reason: str = ""
) -> None:
    """Retire a candidate (an active version leaves only by promotion or rollback)."""
    if model.status == SegmentationModel.Status.ACTIVE:
        raise RegistryError(
            f"{model.label} is active: promote another version or roll back instead"
        )
    with transaction.atomic():
        model.status = SegmentationModel.Status.RETIRED
        model.save(update_fields=["status"])
        model_event_record(
            model, ModelEvent.Action.RETIRE, user=user, username=username, reason=reason
        )


def model_find(text: str) -> SegmentationModel:
    """A version by ``name-version``, by version alone when that is unambiguous, or ``active``."""
    if text == "active":
        return active_model()
    shipped_model_ensure()
    matches = [m for m in SegmentationModel.objects.all() if m.label == text]
    if not matches:
        matches = list(SegmentationModel.objects.filter(version=text))
    if len(matches) != 1:
        known = ", ".join(m.label for m in SegmentationModel.objects.order_by("registered_at"))
        raise RegistryError(f"no single model version {text!r}; registered: {known or 'none'}")
    return matches[0]
