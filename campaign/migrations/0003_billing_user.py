"""The 'billing' user who receives the billing workflow's report.

Created only if missing, with no usable password (nobody logs in as it) and the address of
settings.BILLING_EMAIL. Reversing leaves the user alone: it may have been edited since.
"""

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import migrations


def create_billing_user(apps, schema_editor) -> None:
    app_label, model_name = settings.AUTH_USER_MODEL.split(".")
    User = apps.get_model(app_label, model_name)
    if not User.objects.filter(username="billing").exists():
        User.objects.create(username="billing", email=settings.BILLING_EMAIL, password=make_password(None),
                            is_active=True, is_staff=False, is_superuser=False)


class Migration(migrations.Migration):
    dependencies = [
        ("campaign", "0002_apikey"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(create_billing_user, migrations.RunPython.noop)]
