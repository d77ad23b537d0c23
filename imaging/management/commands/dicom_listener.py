"""``manage.py dicom_listener``: receive DICOM over C-STORE until SIGINT or SIGTERM."""

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from imaging.ingest.listener import DEFAULT_AE_TITLE, DEFAULT_PORT, listener_start
from imaging.ingest.reap import ingest_sessions_reap


class Command(BaseCommand):
    help = (
        "Receive CT, MR, SEG and SR instances over DICOM C-STORE (and answer C-ECHO). "
        "Each association is one ingest session; its series are queued for processing "
        "when it ends."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (11112)")
        parser.add_argument(
            "--ae-title", default=DEFAULT_AE_TITLE, help=f"our AE title ({DEFAULT_AE_TITLE})"
        )
        parser.add_argument(
            "--bind",
            default="127.0.0.1",
            help="address to listen on (127.0.0.1); 0.0.0.0 to accept from the network",
        )
        parser.add_argument(
            "--no-process",
            action="store_true",
            help="store and index only; do not queue series for processing",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=10.0,
            help="seconds to let open associations finish on shutdown (10)",
        )

    def handle(self, *args, **options):
        port = options["port"]
        if not 0 <= port <= 65535:
            raise CommandError(f"--port must be between 0 and 65535, not {port}")
        ae_title = options["ae_title"].strip()
        if not ae_title or len(ae_title) > 16 or "\\" in ae_title:
            raise CommandError("--ae-title must be 1 to 16 characters without a backslash")
        allowed = list(getattr(settings, "RADTRACK_DICOM_ALLOWED_AES", []))
        if options["verbosity"] >= 1:
            # One line per association as it ends (calling AE title and counts only).
            logging.getLogger("imaging.ingest.listener").setLevel(logging.INFO)

        # Sessions of an earlier listener (or import) that was killed are closed first.
        try:
            for session, reason in ingest_sessions_reap():
                self.stderr.write(f"ingest session {session.pk} marked failed: {reason}")
        except DatabaseError as exc:
            self.stderr.write(f"could not look for dead ingest sessions: {type(exc).__name__}")
        stop = threading.Event()
        signals = {signal.SIGINT: None, signal.SIGTERM: None}
        for signum in signals:
            signals[signum] = signal.signal(signum, lambda *_: stop.set())
        try:
            try:
                listener, (host, bound_port) = listener_start(
                    host=options["bind"],
                    port=port,
                    ae_title=ae_title,
                    allowed_aes=allowed,
                    process=not options["no_process"],
                )
            except OSError as exc:
                raise CommandError(
                    f"cannot listen on {options['bind']}:{port}: {exc.strerror or exc}"
                ) from None
            self.stdout.write(
                f"listening for DICOM on {host}:{bound_port} as {ae_title}"
                + (f", accepting {', '.join(allowed)}" if allowed else "")
                + " (Ctrl-C to stop)",
            )
            self.stdout.flush()
            while not stop.wait(0.5):
                pass
            self.stdout.write("stopping: waiting for open associations to finish")
            self.stdout.flush()
            # A second signal aborts open associations at once.
            for signum in signals:
                signal.signal(signum, lambda *_: listener.abort_all())
            listener.stop(grace_s=options["grace"])
            self.stdout.write("stopped")
        finally:
            for signum, previous in signals.items():
                signal.signal(signum, previous)
