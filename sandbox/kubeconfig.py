"""A kubeconfig for the sandbox API, usable by kubectl and the official client alike."""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "sandbox"


@dataclass(frozen=True)
class Identity:
    """One more context (and user of the same name) that authenticates with a bearer token."""

    context: str
    token: str
    namespace: str = "default"


def kubeconfig(server: str, *, context: str = CONTEXT, namespace: str = "default",
               token: str | None = None, others: Sequence[Identity] = (),
               ca: bytes | None = None) -> dict[str, Any]:
    """One cluster and a context named ``context`` (made current) whose user has ``token`` (none:
    the sandbox's unrestricted admin); ``others`` add contexts for more identities. ``ca``: the
    PEM certificate of an HTTPS server."""
    current = Identity(context, token or "", namespace)
    identities = [current, *others]
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server} | (
            {"certificate-authority-data": base64.b64encode(ca).decode()} if ca else {})}],
        "users": [{"name": i.context, "user": {"token": i.token} if i.token else {}}
                  for i in identities],
        "contexts": [{"name": i.context,
                      "context": {"cluster": context, "user": i.context, "namespace": i.namespace}}
                     for i in identities],
        "current-context": context,
        "preferences": {},
    }


def write_kubeconfig(path: Path | str, server: str, *, context: str = CONTEXT,
                     namespace: str = "default", token: str | None = None,
                     others: Sequence[Identity] = (), ca: bytes | None = None) -> Path:
    """Write the kubeconfig atomically with mode 0600 (as kubectl does); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(kubeconfig(server, context=context, namespace=namespace, token=token,
                                     others=others, ca=ca), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
