"""Machine-facing API of the campaign domain, mounted under ``/api/`` (see docs/event-api.md)."""

from django.urls import path

from campaign import api

app_name = "api"

urlpatterns = [
    path("openapi.json", api.openapi_document, name="openapi"),
    path("events/<str:event_type>", api.post_event, name="post_event"),
    path("events/<str:event_type>/batch", api.post_event_batch, name="post_event_batch"),
]
