"""The image store on S3-compatible storage, against a real S3 server on this machine
(moto's server mode, started here): originals content-addressed in the bucket, checked
on the way in and on the way out, a run's files published and fetched, and
``verify_storage`` finding and repairing on the bucket what it finds on a filesystem."""

from __future__ import annotations

import hashlib
import itertools
import os
from io import StringIO
from pathlib import Path

import boto3
import pytest
from django.core.management import CommandError, call_command

from imaging.ingest.service import ingest_paths
from imaging.models import Instance
from imaging.store import (
    derived_local,
    derived_publish,
    object_local,
    object_path,
    object_relative_path,
    objects_scan,
)
from imaging.store_s3 import StoreError
from tests.imaging.factories import ct_files

pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
from moto.server import ThreadedMotoServer  # noqa: E402

BUCKET = "radtrack-test"
_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def s3_server():
    """A local S3 server for this module, and a bucket on it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="radtrack",
        aws_secret_access_key="radtrack-secret",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture
def s3(s3_server, settings, monkeypatch):
    """The store set to S3 (as ``RADTRACK_STORE=s3`` sets it), each test under its own
    prefix in the bucket; (client, prefix)."""
    endpoint, client = s3_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "radtrack")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "radtrack-secret")
    prefix = f"site-{next(_prefixes)}"
    settings.RADTRACK_STORE = "s3"
    settings.STORAGES = {
        **settings.STORAGES,
        "images": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "location": prefix,
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
                "default_acl": None,
                "file_overwrite": True,
            },
        },
    }
    return client, prefix


def keys(client, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(entry["Key"][len(prefix) + 1 :] for entry in listed.get("Contents", ()))


def verify(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("verify_storage", "--quiet", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_an_ingest_stores_originals_in_the_bucket_by_content(s3, tmp_path, settings):
    client, prefix = s3
    files = ct_files(tmp_path / "in", key="s3-ingest", slices=3, size=16)
    ingest_paths(paths=[tmp_path / "in"], process=False)

    rows = list(Instance.objects.order_by("pk"))
    assert len(rows) == 3
    for row in rows:
        assert row.stored_path == object_relative_path(row.sha256)
        key = f"{prefix}/{row.stored_path}"
        content = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        head = client.head_object(Bucket=BUCKET, Key=key)
        assert head["Metadata"]["sha256"] == row.sha256 == hashlib.sha256(content).hexdigest()
        assert not object_path(row.stored_path).exists()  # not on the local disk
    assert keys(client, prefix) == sorted(r.stored_path for r in rows)
    # Nothing left in the local staging folder once uploaded.
    staging = Path(settings.DATA_DIR) / "objects" / ".incoming"
    assert not staging.exists() or not any(staging.iterdir())
    # Read back for the pipeline: a local copy, the very bytes the sender sent (but the
    # zeroed preamble the store writes), checked against the name.
    local = object_local(rows[0].stored_path)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == rows[0].sha256
    assert local.read_bytes()[128:] in {f.read_bytes()[128:] for f in files}

    out, _ = verify()
    assert "3 files checked, 0 missing, 0 changed, 0 not indexed" in out
    assert f"S3 bucket {BUCKET}" in out

    # The same files again: nothing new in the bucket (content addressing).
    ingest_paths(paths=[tmp_path / "in"], process=False)
    assert keys(client, prefix) == sorted(r.stored_path for r in rows)


@pytest.mark.django_db
def test_verify_storage_finds_changed_missing_and_orphaned_objects_and_repairs(s3, tmp_path):
    client, prefix = s3
    ct_files(tmp_path / "in", key="s3-verify", slices=3, size=16)
    ingest_paths(paths=[tmp_path / "in"], process=False)
    changed, missing, kept = Instance.objects.order_by("pk")
    stored = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{changed.stored_path}")
    client.put_object(
        Bucket=BUCKET,
        Key=f"{prefix}/{changed.stored_path}",
        Body=stored["Body"].read()[:-4] + b"XXXX",
        Metadata={"sha256": changed.sha256},  # the metadata still says the old content
    )
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{missing.stored_path}")
    # A good object no row names (a crash between the upload and the index), and a
    # damaged one, both left long enough ago.
    (orphan,) = ct_files(tmp_path / "orphan", key="s3-orphan", slices=1, size=16)
    data = orphan.read_bytes()
    orphan_key = object_relative_path(hashlib.sha256(data).hexdigest())
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{orphan_key}", Body=data)
    damaged_key = object_relative_path("ab" * 32)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{damaged_key}", Body=b"not DICOM")

    with pytest.raises(CommandError) as refused:
        verify("--min-age-minutes", "0")
    assert "3 files checked, 1 missing, 1 changed, 2 not indexed" in str(refused.value)
    with pytest.raises(StoreError, match="does not match its SHA-256"):
        object_local(changed.stored_path)  # a changed original is never read as good

    with pytest.raises(CommandError, match="missing and changed files need a backup"):
        verify("--repair", "--min-age-minutes", "0")
    indexed = Instance.objects.get(stored_path=orphan_key)
    assert indexed.ingest_session.source == "repair"
    assert damaged_key not in keys(client, prefix)  # removed: no row names it
    assert kept.stored_path in keys(client, prefix)
    assert {f.relative for f in objects_scan()} == {
        kept.stored_path,
        changed.stored_path,
        orphan_key,
    }


@pytest.mark.django_db
def test_young_objects_are_left_to_the_upload_that_is_indexing_them(s3, tmp_path):
    client, prefix = s3
    (orphan,) = ct_files(tmp_path / "orphan", key="s3-young", slices=1, size=16)
    data = orphan.read_bytes()
    key = object_relative_path(hashlib.sha256(data).hexdigest())
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=data)
    out, _ = verify()  # 10 minutes by default: just uploaded, not an orphan yet
    assert "0 not indexed" in out


@pytest.mark.django_db
def test_a_runs_files_are_published_and_fetched_checked_on_another_machine(s3, settings):
    client, prefix = s3
    relative = "volumes/1.2.3/run-7/volume.nii.gz"
    local = Path(settings.DATA_DIR) / relative
    local.parent.mkdir(parents=True)
    local.write_bytes(b"\x1f\x8b" + os.urandom(2048))
    derived_publish(relative)
    head = client.head_object(Bucket=BUCKET, Key=f"{prefix}/{relative}")
    assert head["Metadata"]["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()

    written = local.read_bytes()
    local.unlink()  # another machine: the worker's data folder is not here
    assert derived_local(relative).read_bytes() == written

    local.unlink()
    client.put_object(
        Bucket=BUCKET, Key=f"{prefix}/{relative}", Body=b"changed", Metadata=head["Metadata"]
    )
    with pytest.raises(StoreError, match="does not match its SHA-256"):
        derived_local(relative)
    assert not local.exists()  # nothing half-fetched left where a reader would find it
    with pytest.raises(FileNotFoundError):
        derived_local("volumes/none/run-1/volume.nii.gz")


@pytest.mark.django_db
@pytest.mark.slow
def test_a_study_is_processed_from_the_bucket_and_its_files_go_back_there(s3, tmp_path, settings):
    """The worker reads the originals from the bucket and publishes the volume, mask and
    probability map there; another machine reads the volume back from the bucket."""
    import shutil

    from imaging.models import ProcessingRun, Segmentation, Study
    from imaging.pipeline.run import study_process
    from imaging.pipeline.storage import run_volume_read

    client, prefix = s3
    ct_files(tmp_path / "in", key="s3-process", slices=24, size=48)
    ingest_paths(paths=[tmp_path / "in"], process=False)
    (study,) = Study.objects.all()
    run = study_process(study=study)
    assert run.status == ProcessingRun.Status.SUCCEEDED, run.error
    segmentation = Segmentation.objects.get(series=study.series.get(pk=run.series_id))
    stored = set(keys(client, prefix))
    for relative in (run.volume_path, segmentation.mask_path, segmentation.probability_path):
        assert relative in stored
    local = run_volume_read(run)
    shutil.rmtree(Path(settings.DATA_DIR) / "volumes")  # another machine's data folder
    assert (run_volume_read(run).array == local.array).all()
