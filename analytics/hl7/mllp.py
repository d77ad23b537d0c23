"""MLLP (HL7 v2 Minimal Lower Layer Protocol, HL7 Implementation Guide Appendix C) client:
one message out in its ``<VT> ... <FS><CR>`` frame, one framed answer back."""

from __future__ import annotations

import socket
import time

__all__ = ["MLLPError", "mllp_exchange"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: Largest answer read: an ACK is a few hundred bytes.
MAX_ANSWER_BYTES = 1 << 20


class MLLPError(OSError):
    """The exchange failed (no connection, closed, timed out, no frame); says which."""


def mllp_exchange(*, host: str, port: int, message: bytes, timeout_s: float) -> bytes:
    """Send ``message`` framed, return the first framed answer (unframed).

    ``timeout_s`` bounds connecting and the whole wait for the answer. Raises `MLLPError`.
    """
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(START_BLOCK + message + END_BLOCK)
            buffer = b""
            while END_BLOCK not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MLLPError(f"no answer from {host}:{port} within {timeout_s:g} s")
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    raise MLLPError(f"{host}:{port} closed the connection before answering")
                buffer += chunk
                if len(buffer) > MAX_ANSWER_BYTES:
                    raise MLLPError(f"{host}:{port} answered more than {MAX_ANSWER_BYTES} bytes")
    except TimeoutError as exc:
        raise MLLPError(f"no answer from {host}:{port} within {timeout_s:g} s") from exc
    except MLLPError:
        raise
    except OSError as exc:
        raise MLLPError(
            f"cannot reach {host}:{port} ({exc.strerror or type(exc).__name__})"
        ) from exc
    start = buffer.find(START_BLOCK)
    end = buffer.index(END_BLOCK)
    if start < 0 or start > end:
        raise MLLPError(f"{host}:{port} answered without an MLLP start block")
    return buffer[start + 1 : end]
