"""``manage.py login_unlock [--username NAME] [--address IP]``: lift login lockouts (audited)."""

import getpass

from axes.models import AccessAttempt
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from patients.audit import audit_record


class Command(BaseCommand):
    help = (
        "Lift the login lockouts of an account, of an address, or of both (django-axes "
        "access attempts are deleted). Each lifted lockout is written to the audit trail."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", help="the account whose lockout to lift")
        parser.add_argument("--address", help="the client address whose lockout to lift")

    @transaction.atomic
    def handle(self, *args, **options):
        if not options["username"] and not options["address"]:
            raise CommandError("name --username, --address or both")
        attempts = AccessAttempt.objects.all()
        if options["username"]:
            attempts = attempts.filter(username=options["username"])
        if options["address"]:
            attempts = attempts.filter(ip_address=options["address"])
        caller = f"cli:{getpass.getuser()}"
        lifted = 0
        for attempt in attempts:
            audit_record(
                action="admin.lockout.lift",
                object=f"login lockout of {attempt.username!r} from {attempt.ip_address}",
                username=caller,
            )
            attempt.delete()
            lifted += 1
        self.stdout.write(f"{lifted} lockout record(s) lifted")
