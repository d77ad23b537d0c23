"""The record of one pipeline run: each step's name, parameters, versions, timing and
outcome, saved on `ProcessingRun.steps` as the run goes, so every number shown later can
be traced to what made it (docs/ARCHITECTURE.md, "Provenance")."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from imaging.models import ProcessingRun
from radtrack.provenance import json_safe


class StepFailed(Exception):
    """A pipeline step could not complete; the message is shown to users."""


@dataclass
class RunRecorder:
    """Collects step records for a `ProcessingRun` as the pipeline goes."""

    run: ProcessingRun
    steps: list[dict[str, Any]] = field(default_factory=list)
    on_step: Callable[[str], None] | None = None

    @contextmanager
    def step(self, name: str, **parameters: Any) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"name": name, "parameters": parameters, "status": "running"}
        self.steps.append(entry)
        self._save()
        if self.on_step:
            self.on_step(name)
        started = time.perf_counter()
        try:
            yield entry
        except Exception as exc:
            entry["status"] = "failed"
            entry["error"] = str(exc)
            raise
        else:
            entry["status"] = "succeeded"
        finally:
            entry["seconds"] = round(time.perf_counter() - started, 4)
            self._save()

    def records(self, records: Any, *, group: str) -> None:
        """Add the core library's own step records (name, parameters, versions, timing)."""
        for record in records:
            entry = record.as_dict() if hasattr(record, "as_dict") else dict(record)
            entry = {"name": entry.pop("name"), "group": group, "status": "succeeded", **entry}
            self.steps.append(entry)
        self._save()

    def _save(self) -> None:
        self.run.steps = json_safe(self.steps)
        self.run.save(update_fields=["steps"])
