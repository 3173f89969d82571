"""A kubeconfig for the sandbox API, usable by kubectl and the official client alike."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "sandbox"


def kubeconfig(server: str, *, context: str = CONTEXT, namespace: str = "default") -> dict[str, Any]:
    """One cluster, one (credential-less) user and one context named ``context``, made current."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server}}],
        "users": [{"name": context, "user": {}}],
        "contexts": [{"name": context,
                      "context": {"cluster": context, "user": context, "namespace": namespace}}],
        "current-context": context,
        "preferences": {},
    }


def write_kubeconfig(path: Path | str, server: str, *, context: str = CONTEXT,
                     namespace: str = "default") -> Path:
    """Write the kubeconfig atomically with mode 0600 (as kubectl does); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(kubeconfig(server, context=context, namespace=namespace), sort_keys=False)
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
