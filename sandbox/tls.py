"""A throwaway self-signed certificate, so the sandbox can serve HTTPS.

kubectl (client-go's clientcmd) sends no credentials at all over plain HTTP — no token, no
impersonation — so a sandbox that tells identities apart (RBAC, sandbox/rbac.py) must speak TLS.
The key is made by the ``openssl`` program for each server and never leaves its temporary
directory; the certificate goes into the kubeconfig as the cluster's CA.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    cert_pem: bytes
    context: ssl.SSLContext  # the server side


def self_signed(host: str) -> Certificate:
    """A P-256 certificate for ``host`` (plus localhost and 127.0.0.1), valid for ten years."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("serving the sandbox over HTTPS (needed for RBAC identities) needs the "
                           "openssl program; install it (apt-get install openssl)")
    names = {"DNS:localhost", "IP:127.0.0.1"}
    try:
        names.add(f"IP:{ipaddress.ip_address(host)}")
    except ValueError:
        names.add(f"DNS:{host}")
    with tempfile.TemporaryDirectory(prefix="opsbot-sandbox-tls-") as tmp:
        key, cert = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3650",
             "-subj", "/CN=opsbot-sandbox", "-addext", f"subjectAltName={','.join(sorted(names))}",
             "-addext", "basicConstraints=critical,CA:TRUE"],
            check=True, capture_output=True, timeout=30)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return Certificate(cert.read_bytes(), context)
