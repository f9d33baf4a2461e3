"""The production HTTPS settings at work: plain HTTP is redirected, except the probes of the
private network; a request the proxy marks as HTTPS is served, with HSTS and secure cookies."""

import pytest

from project.config import load_config

pytestmark = pytest.mark.django_db


@pytest.fixture
def production_https(settings, tmp_path):
    config = load_config(
        {"DATABASE_URL": "postgres://campaign@db.internal/campaign", "SECRET_KEY": "s3cret-" * 8, "VAR_DIR": str(tmp_path)},
        base_dir=tmp_path,
    )
    for name, value in config.security.items():
        setattr(settings, name, value)


def test_plain_http_is_redirected_to_https(client, production_https) -> None:
    response = client.get("/admin/login/")

    assert response.status_code == 301
    assert response["Location"] == "https://testserver/admin/login/"


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_probes_answer_over_plain_http(client, production_https, path: str) -> None:
    response = client.get(path)

    assert response.status_code in (200, 503)


def test_a_request_the_proxy_marks_https_gets_hsts_and_secure_cookies(client, production_https) -> None:
    response = client.get("/admin/login/", headers={"X-Forwarded-Proto": "https"})

    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert response.cookies["csrftoken"]["secure"] is True
