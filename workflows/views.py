"""HTTP endpoints of the engine for machines: ``/healthz`` for load balancers, ``/metrics`` for
Prometheus. The views only translate; the checks live in :mod:`workflows.health` and the metrics
in :mod:`workflows.metrics`."""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from workflows import health, metrics

logger = logging.getLogger(__name__)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Unauthenticated on purpose (load balancers): the report holds no secret."""
    report = health.run_checks()
    return JsonResponse(report.as_json(), status=200 if report.ok else 503)


@never_cache
@require_GET
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Open, unless ``settings.METRICS_TOKEN`` is set: then ``Authorization: Bearer <token>`` is
    required. The variable is parsed at start-up (:mod:`project.config`): rotating it means
    restarting ``web``."""
    token = settings.METRICS_TOKEN
    if token and not _bearer_matches(request, token):
        response = HttpResponse("a valid bearer token is required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    try:
        body = metrics.render()
    except DatabaseError as error:
        logger.warning("metrics unavailable: %s", error)
        return HttpResponse("database unavailable\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def _bearer_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())
