"""``manage.py create_demo_user``: a login for the demo, in the radiologist and admin groups."""

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from patients.permissions import ADMIN, RADIOLOGIST


class Command(BaseCommand):
    help = (
        "Create (or update) a demo login in the radiologist and admin groups, with staff "
        "access to the admin site, and print its password. Running it again keeps the "
        "account and sets a new password. A --password must pass the password validators "
        "(AUTH_PASSWORD_VALIDATORS): it opens an administrator account."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo", help="login name (default: demo)")
        parser.add_argument(
            "--password", help="use this password instead of generating a random one"
        )
        parser.add_argument("--email", default="", help="e-mail address (optional)")

    @transaction.atomic
    def handle(self, *args, **options):
        username = options["username"].strip()
        if not username:
            raise CommandError("--username must not be empty")
        groups = list(Group.objects.filter(name__in=[RADIOLOGIST, ADMIN]))
        if len(groups) != 2:
            raise CommandError(
                "the radiologist and admin groups are missing: run `manage.py migrate` first"
            )
        password = options["password"] or secrets.token_urlsafe(12)
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(**{user_model.USERNAME_FIELD: username})
        user.is_staff = True
        user.is_active = True
        if options["email"]:
            user.email = options["email"]
        try:
            validate_password(password, user=user)
        except ValidationError as exc:
            raise CommandError("password refused: " + " ".join(exc.messages)) from None
        user.set_password(password)
        user.save()
        user.groups.add(*groups)
        verb = "created" if created else "updated"
        self.stdout.write(f"demo login {verb}: username {username}, password {password}")
