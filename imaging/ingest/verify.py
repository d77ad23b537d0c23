"""Re-check every stored original against the SHA-256 recorded when it arrived."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from imaging.models import Instance
from imaging.store import file_sha256, object_path


@dataclass
class StorageCheck:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


def storage_verify(*, on_instance: Callable[[], None] | None = None) -> StorageCheck:
    """Hash every stored file; report the SOP Instance UIDs whose file is gone or changed."""
    result = StorageCheck()
    rows = Instance.objects.order_by("pk").values_list("sop_instance_uid", "stored_path", "sha256")
    for sop_instance_uid, relative, sha256 in rows.iterator(chunk_size=2000):
        path = object_path(relative)
        result.checked += 1
        if not path.is_file():
            result.missing.append(sop_instance_uid)
        elif file_sha256(path) != sha256:
            result.corrupt.append(sop_instance_uid)
        if on_instance:
            on_instance()
    return result
