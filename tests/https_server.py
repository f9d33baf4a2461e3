"""An HTTPS server on loopback for the clients that require HTTPS (the deliverability service).

A throw-away certificate authority and a server certificate for ``localhost`` / ``127.0.0.1`` are
made with the ``openssl`` command (no extra Python package); the clients trust the test CA through
``REQUESTS_CA_BUNDLE``, which ``requests`` honours for every session — the same setting an operator
uses for a service behind a private CA. Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

SERVER_EXTENSIONS = """\
subjectAltName = DNS:localhost, IP:127.0.0.1
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
"""


@dataclass(frozen=True)
class Certificates:
    ca: Path
    certificate: Path
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA and a server certificate it signed, valid two days, with EC keys (fast to make)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test certificates")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    key_options = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key_options, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *key_options, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "server.ext").write_text(SERVER_EXTENSIONS)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return Certificates(ca=directory / "ca.pem", certificate=directory / "server.pem", key=directory / "server.key")


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def https_server_session(tls_certificates: Certificates) -> Iterator[HTTPServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_certificates.certificate, tls_certificates.key)
    server = HTTPServer(host="localhost", port=0, ssl_context=context)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()


@pytest.fixture
def https_server(https_server_session: HTTPServer, tls_certificates: Certificates,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPServer]:
    """The HTTPS server, trusted by ``requests`` for this test, cleared after it."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_certificates.ca))
    https_server_session.clear()
    yield https_server_session
    https_server_session.clear()
