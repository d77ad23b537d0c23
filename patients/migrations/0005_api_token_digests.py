"""API tokens stored as digests (radtrack.api.tokens): each stored token becomes the digest
of itself, so clients keep using the token they hold while the database no longer has it.

Not reversible: a digest cannot be turned back into its token.
"""

import hashlib

from django.db import migrations

DIGEST_LENGTH = 40


def _digest(raw: str) -> str:
    # The same rule as radtrack.api.tokens.token_digest, frozen here as migrations are.
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_LENGTH]


def tokens_to_digests(apps, schema_editor):
    Token = apps.get_model("authtoken", "Token")
    db = schema_editor.connection.alias
    for token in list(Token.objects.using(db).all()):
        user_id, created, key = token.user_id, token.created, token.key
        Token.objects.using(db).filter(pk=key).delete()
        Token.objects.using(db).create(key=_digest(key), user_id=user_id)
        # ``created`` is auto_now_add: put the original date back with an update.
        Token.objects.using(db).filter(pk=_digest(key)).update(created=created)


class Migration(migrations.Migration):
    dependencies = [
        ("patients", "0004_review_permissions"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [migrations.RunPython(tokens_to_digests, migrations.RunPython.noop)]
