"""A check that code under test logged no traceback and no error (issue 19's fuzz runs:
"no traceback in the logs")."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _Caught(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        traceback = bool(record.exc_info or record.exc_text or record.stack_info)
        traceback |= "Traceback (most recent call last)" in str(record.msg)
        if traceback or record.levelno >= logging.ERROR:
            self.records.append(record)


@contextlib.contextmanager
def no_traceback_logged() -> Iterator[None]:
    """Fail if, inside the block, anything logged a traceback or an ERROR record (the
    readers log an ERROR when an unexpected exception made them refuse a file)."""
    handler = _Caught()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    shown = [f"{r.levelname} {r.name}: {r.getMessage()[:200]}" for r in handler.records]
    assert not shown, "logged while reading fuzzed input:\n" + "\n".join(shown)
