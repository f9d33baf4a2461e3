"""``GET /api/openapi.json``: served without a key, and true to the code: its paths are the API's
routes, and each operation documents exactly the statuses requests to it can get.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import resolve

from campaign import api, urls_api
from campaign.api.views import OPENAPI_PATH


@pytest.fixture
def document(client) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    return response.json()


def test_the_description_is_served_without_a_key_and_is_the_shipped_file(client, document):
    assert document == json.loads(OPENAPI_PATH.read_text())
    assert document["openapi"].startswith("3.1")
    assert client.post("/api/openapi.json").status_code == 405


def test_documented_paths_are_the_routes_of_the_api(document):
    routes = {"/api/" + re.sub(r"<str:event_type>", "{eventType}", str(pattern.pattern)) for pattern in urls_api.urlpatterns}

    assert set(document["paths"]) == routes
    views = {path: resolve(path.replace("{eventType}", "order_confirmation")).func for path in document["paths"]}
    assert views == {"/api/events/{eventType}": api.post_event, "/api/events/{eventType}/batch": api.post_event_batch,
                     "/api/openapi.json": api.openapi_document}


def requests_by_status(key: str) -> dict[str, dict[str, Callable[[Client], Any]]]:
    """For each operation, one request per status it can answer."""
    def single(body: bytes, **headers: str) -> Callable[[Client], Any]:
        return lambda client: client.post("/api/events/order", data=body, content_type="application/json", **headers)

    def batch(body: bytes, **headers: str) -> Callable[[Client], Any]:
        return lambda client: client.post("/api/events/order/batch", data=body, content_type="application/json", **headers)

    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    big = json.dumps({"email": "ann@example.com", "context": {"pad": "x" * 70_000}}).encode()
    chunked = {**auth, "HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": ""}
    return {
        "postEvent": {
            "202": single(b'{"email": "ann@example.com"}', **auth),
            "400": single(b'{"email": "ann@example.com", "context": {"x": NaN}}', **auth),
            "401": single(b'{"email": "ann@example.com"}'),
            "403": single(b'{"email": "ann@example.com"}', HTTP_AUTHORIZATION="Bearer nope"),
            "409": single(b'{"email": "bob@example.com"}', HTTP_IDEMPOTENCY_KEY="used", **auth),
            "411": single(b'{"email": "ann@example.com"}', **chunked),
            "413": single(big, **auth),
        },
        "postEventBatch": {
            "202": batch(b'{"events": [{"email": "ann@example.com"}]}', **auth),
            "400": batch(b'{"events": [{"email": "ann@"}]}', **auth),
            "401": batch(b'{"events": [{"email": "ann@example.com"}]}'),
            "403": batch(b'{"events": [{"email": "ann@example.com"}]}', HTTP_AUTHORIZATION="Bearer nope"),
            "409": batch(b'{"events": [{"email": "bob@example.com", "idempotency_key": "used"}]}', **auth),
            "411": batch(b'{"events": [{"email": "ann@example.com"}]}', **chunked),
            "413": batch(b'{"events": [' + b", ".join([big] * 70) + b"]}", **auth),
        },
        "getOpenApi": {"200": lambda client: client.get("/api/openapi.json")},
    }


def test_each_operation_documents_exactly_the_statuses_it_answers(client, document, db):
    key = api.create_api_key(name="crm")[1]
    client.post("/api/events/order", data=b'{"email": "ann@example.com"}', content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_IDEMPOTENCY_KEY="used")
    operations = {operation["operationId"]: operation for item in document["paths"].values() for operation in item.values()}
    examples = requests_by_status(key)

    assert set(operations) == set(examples)
    for operation_id, operation in operations.items():
        assert set(operation["responses"]) == set(examples[operation_id]), operation_id
        for status, request in examples[operation_id].items():
            response = request(client)
            assert str(response.status_code) == status, (operation_id, status, response.content[:200])
            if status.startswith("4"):
                assert set(response.json()) == {"error"}
