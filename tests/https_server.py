"""An HTTPS server on loopback for the clients that require HTTPS (the deliverability service).

A throw-away certificate authority and a server certificate for ``localhost`` / ``127.0.0.1`` are
made with the ``openssl`` command (no extra Python package); the clients trust the test CA through
``REQUESTS_CA_BUNDLE``, which ``requests`` honours for every session — the same setting an operator
uses for a service behind a private CA. The fixtures (``https_server``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

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
