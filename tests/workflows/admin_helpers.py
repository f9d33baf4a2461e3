"""What the workflow admin's tests share: the change page's URL, a staff client with chosen
permissions, submitting the change form as a browser would (every current value, some changed), and
reading back the message a command sent to the broker."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse


def change_url(workflow_id: str) -> str:
    return reverse("admin:workflows_workflow_change", args=[workflow_id])


def form_data(response: HttpResponse) -> dict[str, Any]:
    """What a browser would submit for the change form rendered in ``response``: every field's
    current value, and the inline formsets' management and hidden fields."""
    data: dict[str, Any] = {}

    def add(form: Any) -> None:
        for name in form.fields:
            value = form[name].value()
            if value is None or value is False:
                continue
            data[form.add_prefix(name)] = "on" if value is True else value

    add(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        add(inline.formset.management_form)
        for form in inline.formset.forms:
            add(form)
    return data


def edit(client: Client, workflow_id: str, **changes: Any) -> HttpResponse:
    """Load the workflow page, change some fields (None unticks a checkbox), submit."""
    data = form_data(client.get(change_url(workflow_id)))
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return client.post(change_url(workflow_id), data)


def staff_client(django_user_model: Any, *codenames: str) -> Client:
    user = django_user_model.objects.create_user("operator", password="unused-password", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="workflows", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def broker_message(queue: str, task_id: str) -> Any:
    """The message sent with ``task_id`` (``.headers``; ``.payload``: args, kwargs, options), read
    back from the broker (filesystem or Redis, whichever the settings name)."""
    return broker_messages(queue, [task_id])[task_id]


def broker_messages(queue: str, task_ids: list[str]) -> dict[str, Any]:
    """The messages sent with ``task_ids``, by id, read in one pass: a message is gone once read,
    and the queue's order is not the order of sending (the filesystem broker sorts its files by
    millisecond, then by a random name), so reading them one call each could consume the second
    while looking for the first."""
    from project.celery import app

    found: dict[str, Any] = {}
    with app.connection_for_read() as connection_, connection_.SimpleQueue(queue) as simple:
        for _ in range(1000):
            message = simple.get(block=True, timeout=5)
            message.ack()
            if message.headers.get("id") in task_ids:
                found[message.headers["id"]] = message
                if len(found) == len(task_ids):
                    return found
    raise AssertionError(f"no message {', '.join(set(task_ids) - set(found))} in queue {queue}")
