"""A throwaway certificate authority and a server certificate for 127.0.0.1, made with
``openssl`` for tests of TLS against real servers."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerCert:
    """The files :func:`make_server_cert` wrote: the CA's certificate, the server's
    certificate and its private key (PKCS#8, unencrypted), all PEM."""

    ca: Path
    cert: Path
    key: Path

    def keystore_pem(self) -> Path:
        """The key and the certificate in one PEM file, as Kafka's PEM keystore reads it."""
        pem = self.key.with_name("keystore.pem")
        pem.write_text(self.key.read_text() + self.cert.read_text())
        return pem


def _openssl(command: str, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *command.split()], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def make_server_cert(d: Path) -> ServerCert:
    """A CA valid for a day, and a certificate it signed for IP 127.0.0.1, in ``d``."""
    _openssl(
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.crt", d
    )
    _openssl("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout srv.key -out srv.csr", d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
        "-extfile san.cnf -out srv.crt",
        d,
    )
    _openssl("pkcs8 -topk8 -nocrypt -in srv.key -out srv.p8", d)
    return ServerCert(d / "ca.crt", d / "srv.crt", d / "srv.p8")
