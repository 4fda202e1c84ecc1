"""`Certificates`: a throw-away certificate authority and a server certificate for TLS tests.

`make_certificates(directory)` writes, with the `openssl` command-line tool, a CA (`ca.crt`)
and a certificate it signed for `127.0.0.1` and `localhost` (subject alternative names) with
its key (`server.crt`, `server.key`), all valid for two days; the test servers use them
(`RedisServer(tls=...)`) and clients trust `ca.crt`. The keys are EC P-256 (made in a few
milliseconds) and have no passphrase; the extensions are those strict verifiers want (Python
3.13's `VERIFY_X509_STRICT`: key usages, key identifiers, a critical CA constraint). Like
`redis_server`, only the standard library is used: no `cryptography` package.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CONFIG = """\
[req]
distinguished_name = subject
prompt = no
[subject]
CN = girder test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def find_openssl() -> str | None:
    """The path of an `openssl` binary on PATH, or None."""
    return shutil.which("openssl")


@dataclass(frozen=True, slots=True)
class Certificates:
    """Paths of a test CA's certificate and of a server certificate it signed, with its key."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA (and checks the host name), and
        presents the certificate as its own (to servers that ask clients for one)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def make_certificates(directory: Path, openssl: str | None = None) -> Certificates:
    """Write a CA and a server certificate for 127.0.0.1/localhost into `directory` (which
    should be private: the keys are plain files); `RuntimeError` with openssl's output if it
    fails, `FileNotFoundError` without an `openssl` binary."""
    binary = openssl or find_openssl()
    if binary is None:
        raise FileNotFoundError("no openssl binary on PATH")
    config = directory / "openssl.cnf"
    config.write_text(_CONFIG)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, request = (directory / f"server.{ext}" for ext in ("crt", "key", "csr"))
    steps = [
        ["req", "-x509", "-new", *_NEW_KEY, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=girder test CA", "-config", config, "-extensions", "ca"],
        ["req", "-new", *_NEW_KEY, "-keyout", key, "-out", request,
         "-subj", "/CN=localhost", "-config", config],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-set_serial", "1",
         "-days", "2", "-out", cert, "-extfile", config, "-extensions", "server"],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(
            [binary, *map(str, step)], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"openssl {step[0]} failed:\n{done.stderr}")
    return Certificates(ca=ca, cert=cert, key=key)
