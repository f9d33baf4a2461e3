"""Machine-facing API of the campaign domain, mounted under ``/api/`` (see docs/event-api.md)."""

from django.urls import path

from campaign import api

app_name = "api"

urlpatterns = [
    path("events/<str:event_type>", api.post_event, name="post_event"),
]
