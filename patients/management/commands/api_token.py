"""``manage.py api_token USERNAME``: issue a new API token for an account and print it once."""

import getpass

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from patients.audit import audit_record
from radtrack.api.tokens import api_token_issue


class Command(BaseCommand):
    help = (
        "Issue a new API token for USERNAME (any earlier one stops working) and print it. "
        "Only a digest is stored: the token is shown this once. Audited."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, **options):
        user_model = get_user_model()
        try:
            user = user_model.objects.get(**{user_model.USERNAME_FIELD: options["username"]})
        except user_model.DoesNotExist:
            raise CommandError(f"no account named {options['username']!r}") from None
        if not user.is_active:
            raise CommandError(f"account {options['username']!r} is not active")
        raw = api_token_issue(user=user)
        audit_record(
            action="admin.token.add",
            object=f"API token of user {user.pk} ({user.get_username()})",
            username=f"cli:{getpass.getuser()}",
        )
        self.stdout.write(raw)
