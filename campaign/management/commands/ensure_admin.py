"""Create the first administrator and print how to log in (``make run``)."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create a superuser 'admin' when the instance has none, and print its credentials."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="admin@localhost")

    def handle(self, *args, username: str, email: str, **options) -> None:
        User = get_user_model()
        # The generated password is kept beside the database so that every `make run` can show it;
        # it is only ever written for a user this command created.
        password_file = settings.VAR_DIR / "admin-password"
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(username=username, email=email, password=password)
            settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password)
            password_file.chmod(0o600)
            self.stdout.write(self.style.SUCCESS(f"Created the administrator '{username}'."))
        if password_file.exists() and User.objects.filter(username=username, is_superuser=True).exists():
            self.stdout.write(
                f"Admin: http://{settings.WEB_BIND}/admin/  "
                f"user: {username}  password: {password_file.read_text().strip()}"
            )
        else:
            self.stdout.write("A superuser already exists; log in with its credentials (manage.py changepassword to reset).")
