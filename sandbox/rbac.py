"""Who asked for what, and may they: request attributes, an audit of them, and RBAC.

Every request the sandbox serves is classified as kube-apiserver's ``RequestInfoFactory`` does
(verb, API group, resource, subresource, namespace, name) so a test can see exactly which
permissions a client used (:class:`Audit`). With a :class:`Policy` loaded from RBAC manifests
(Role, ClusterRole, RoleBinding, ClusterRoleBinding, ServiceAccount), a request whose bearer token
belongs to a ServiceAccount is allowed only when a bound rule matches (the RBAC authorizer's
rules: ``*`` wildcards, ``deployments/scale`` and ``*/scale``, resourceNames), else it gets the
apiserver's 403 Status. Any other token (or none: the admin kubeconfig) stays unrestricted, and
non-resource requests (discovery, /version, /healthz, openapi) are always allowed, as the
``system:discovery`` ClusterRole allows them to everyone in a real cluster.

The RBAC objects are not served as API resources: the policy is fixed when the server starts.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import yaml

from sandbox.cluster import ApiError

Obj = dict[str, Any]

ADMIN = "kubernetes-admin"  # who a request without a ServiceAccount token is
RBAC_GROUP = "rbac.authorization.k8s.io"
READ_VERBS = {"GET": "get", "HEAD": "get"}
WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
NAMESPACE_SUBRESOURCES = {"status", "finalize"}


# --------------------------------------------------------------------------- request attributes


@dataclass(frozen=True)
class RequestAttributes:
    """authorizer.Attributes of one request (what RBAC decides on and audit logs record)."""

    user: str
    verb: str
    path: str
    resource_request: bool = False
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def combined_resource(self) -> str:
        """``deployments/scale``; what an RBAC rule's ``resources`` names."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def classify(method: str, path: str, query: str | Mapping[str, str], user: str = ADMIN) -> RequestAttributes:
    """The attributes kube-apiserver derives from a request (k8s.io/apiserver RequestInfoFactory).

    ``/api/v1/namespaces/prod/pods/x/log`` → get, "", pods, log, prod, x. A GET without a name is
    ``list`` (``watch`` with ``?watch=true``), a DELETE without one ``deletecollection``; a list or
    watch (only those: a deletecollection stays nameless) with ``fieldSelector=metadata.name=x``
    carries the name ``x``, so resourceNames rules apply to it, as kube-apiserver's
    ``RequestInfoFactory`` does (``FieldSelector.RequiresExactMatch("metadata.name")`` for a GET
    without a name, the name kept only when it is a valid path segment). Anything not under
    /api/VERSION/… or /apis/GROUP/VERSION/… is a non-resource request (verb: the lowercased method).
    """
    params = parse_qs(query) if isinstance(query, str) else {k: [v] for k, v in query.items()}
    parts = [p for p in path.split("/") if p]
    verb = READ_VERBS.get(method, WRITE_VERBS.get(method, method.lower()))
    non_resource = RequestAttributes(user=user, verb=method.lower(), path=path)
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return non_resource
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not name:
        if verb == "get":
            verb = "watch" if _truthy(params.get("watch")) else "list"
            name = _name_from_field_selector(params.get("fieldSelector"))
        elif verb == "delete":
            verb = "deletecollection"
    return RequestAttributes(user=user, verb=verb, path=path, resource_request=True,
                             api_group=group, resource=resource, subresource=subresource,
                             namespace=namespace, name=name)


def _truthy(values: list[str] | None) -> bool:
    return values is not None and bool(values) and values[0].lower() in ("1", "true")


def _name_from_field_selector(values: list[str] | None) -> str:
    for requirement in (values[0] if values else "").split(","):
        m = re.fullmatch(r"\s*metadata\.name\s*(?:==|=)\s*(\S*)\s*", requirement)
        if m:
            name = m.group(1)
            # apimachinery's path.IsValidPathSegmentName: not "." or "..", no "/" or "%"
            return "" if name in (".", "..") or "/" in name or "%" in name else name
    return ""


# --------------------------------------------------------------------------- the audit


class Access(NamedTuple):
    """One kind of access, as an RBAC grant names it (resource with ``/subresource``)."""

    verb: str
    group: str
    resource: str
    namespace: str


class Audit:
    """The distinct accesses the server saw, by user, allowed or not (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[tuple[str, Access, bool]] = set()

    def record(self, attributes: RequestAttributes, allowed: bool) -> None:
        if not attributes.resource_request:
            return
        access = Access(attributes.verb, attributes.api_group, attributes.combined_resource,
                        attributes.namespace)
        with self._lock:
            self._seen.add((attributes.user, access, allowed))

    def seen(self, user: str | None = None, *, allowed: bool | None = None) -> set[Access]:
        """What ``user`` (None: anyone) asked for; ``allowed`` filters on the decision."""
        with self._lock:
            return {access for who, access, ok in self._seen
                    if (user is None or who == user) and (allowed is None or ok == allowed)}

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()


# --------------------------------------------------------------------------- RBAC


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class Rule:
    """An rbac/v1 PolicyRule (resource rules only: nonResourceURLs are always allowed here)."""

    verbs: frozenset[str]
    api_groups: frozenset[str]
    resources: frozenset[str]
    resource_names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, rule: Obj) -> Rule:
        return cls(frozenset(rule.get("verbs") or ()), frozenset(rule.get("apiGroups") or ()),
                   frozenset(rule.get("resources") or ()), frozenset(rule.get("resourceNames") or ()))

    def allows(self, a: RequestAttributes) -> bool:
        """rbac.RuleAllows: verb, group, resource (``*``, exact, ``*/sub``) and resourceNames."""
        return (("*" in self.verbs or a.verb in self.verbs)
                and ("*" in self.api_groups or a.api_group in self.api_groups)
                and self._resource_matches(a)
                and (not self.resource_names or a.name in self.resource_names))

    def _resource_matches(self, a: RequestAttributes) -> bool:
        combined = a.combined_resource
        for resource in self.resources:
            if resource in ("*", combined):
                return True
            if a.subresource and resource == f"*/{a.subresource}":
                return True
        return False


@dataclass(frozen=True)
class Binding:
    namespace: str  # "" for a ClusterRoleBinding
    name: str
    role_kind: str  # Role or ClusterRole
    role_name: str
    subjects: tuple[tuple[str, str, str], ...]  # (kind, name, namespace)

    def binds(self, user: str, groups: Iterable[str]) -> bool:
        groups = set(groups)
        for kind, name, namespace in self.subjects:
            if kind == "ServiceAccount" and user == service_account_user(namespace or self.namespace, name):
                return True
            if kind == "User" and user == name:
                return True
            if kind == "Group" and name in groups:
                return True
        return False


@dataclass
class Policy:
    """RBAC objects and the bearer tokens of the identities they restrict.

    ``tokens`` maps a bearer token to a user name (``system:serviceaccount:NS:NAME``). A request
    with one of them is authorized against the bindings; any other request is not restricted.
    """

    roles: dict[tuple[str, str], list[Rule]] = field(default_factory=dict)  # (namespace, name); "" = cluster
    bindings: list[Binding] = field(default_factory=list)
    service_accounts: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)
    tokens: dict[str, str] = field(default_factory=dict)

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(cls, *paths: Path | str, tokens: Mapping[str, str] | None = None) -> Policy:
        """Read RBAC documents from YAML files or directories of them (``*.yaml``, ``*.yml``).

        Other kinds are ignored, as are ``kustomization.yaml`` files. Without ``tokens``, every
        ServiceAccount found gets a fresh random token (see :meth:`token_for`).
        """
        policy = cls()
        for path in paths:
            for file in _manifest_files(Path(path)):
                for doc in yaml.safe_load_all(file.read_text(encoding="utf-8")):
                    if isinstance(doc, dict):
                        policy.add(doc)
        if tokens is not None:
            policy.tokens.update(tokens)
        else:
            for namespace, name in policy.service_accounts:
                policy.tokens[secrets.token_urlsafe(24)] = service_account_user(namespace, name)
        return policy

    def add(self, doc: Obj) -> None:
        """Take one object (a List's items too); kinds other than RBAC's and ServiceAccount are
        ignored."""
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        group = str(doc.get("apiVersion", "")).partition("/")[0]
        if kind == "List":
            for item in doc.get("items") or []:
                self.add(item)
        elif kind == "ServiceAccount" and doc.get("apiVersion") == "v1":
            self.service_accounts.append((meta.get("namespace") or "default", meta["name"]))
        elif group != RBAC_GROUP:
            return
        elif kind in ("Role", "ClusterRole"):
            namespace = (meta.get("namespace") or "default") if kind == "Role" else ""
            self.roles[(namespace, meta["name"])] = [Rule.of(r) for r in doc.get("rules") or []]
        elif kind in ("RoleBinding", "ClusterRoleBinding"):
            namespace = (meta.get("namespace") or "default") if kind == "RoleBinding" else ""
            ref = doc.get("roleRef") or {}
            subjects = tuple((s.get("kind", ""), s.get("name", ""), s.get("namespace") or "")
                             for s in doc.get("subjects") or [])
            self.bindings.append(Binding(namespace, meta["name"], ref.get("kind", ""),
                                         ref.get("name", ""), subjects))

    def token_for(self, user: str) -> str:
        """The bearer token that authenticates as ``user`` (KeyError when there is none)."""
        for token, who in self.tokens.items():
            if who == user:
                return token
        raise KeyError(f"no token for {user}")

    # ----------------------------------------------------------------- deciding

    def authenticate(self, authorization: str | None) -> str | None:
        """The restricted user a bearer token names, or None (unrestricted)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.tokens.get(token.strip())

    def authorize(self, a: RequestAttributes) -> tuple[bool, str]:
        """(allowed, reason) as the RBAC authorizer decides; the reason names missing roles."""
        if not a.resource_request:
            return True, ""
        groups = ["system:authenticated"]
        if a.user.startswith("system:serviceaccount:"):
            groups += ["system:serviceaccounts", f"system:serviceaccounts:{a.user.split(':')[2]}"]
        problems: list[str] = []
        for binding in self.bindings:
            if binding.namespace and binding.namespace != a.namespace:
                continue
            if not binding.binds(a.user, groups):
                continue
            cluster_role = binding.role_kind == "ClusterRole"
            key = ("" if cluster_role else binding.namespace, binding.role_name)
            rules = self.roles.get(key)
            if rules is None:
                kind = "clusterrole" if cluster_role else "role"
                problems.append(f'{kind}.{RBAC_GROUP} "{binding.role_name}" not found')
                continue
            if any(rule.allows(a) for rule in rules):
                return True, ""
        reason = f"RBAC: {', '.join(problems)}" if problems else ""
        return False, reason

    def granted(self, user: str) -> set[Access]:
        """Every (verb, group, resource, namespace) the bindings give ``user`` by name — the
        exact grants, for comparing with :meth:`Audit.seen` (wildcards stay ``*``)."""
        groups = ["system:authenticated", "system:serviceaccounts"]
        if user.startswith("system:serviceaccount:"):
            groups.append(f"system:serviceaccounts:{user.split(':')[2]}")
        accesses: set[Access] = set()
        for binding in self.bindings:
            if not binding.binds(user, groups):
                continue
            key = ("" if binding.role_kind == "ClusterRole" else binding.namespace, binding.role_name)
            for rule in self.roles.get(key, []):
                accesses |= {Access(v, g, r, binding.namespace)
                             for v in rule.verbs for g in rule.api_groups for r in rule.resources}
        return accesses


def _manifest_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    else:
        files = [path]
    return [f for f in files if f.name not in ("kustomization.yaml", "kustomization.yml")]


def forbidden(a: RequestAttributes, reason: str = "") -> ApiError:
    """The apiserver's 403 (responsewriters.ForbiddenStatusError + errors.NewForbidden)."""
    resource = a.combined_resource
    if not a.resource_request:
        message = f'User "{a.user}" cannot {a.verb} path "{a.path}"'
    elif a.namespace:
        message = (f'User "{a.user}" cannot {a.verb} resource "{resource}" in API group '
                   f'"{a.api_group}" in the namespace "{a.namespace}"')
    else:
        message = (f'User "{a.user}" cannot {a.verb} resource "{resource}" in API group '
                   f'"{a.api_group}" at the cluster scope')
    if reason:
        message = f"{message}: {reason}"
    qualified = f"{a.resource}.{a.api_group}" if a.api_group else a.resource
    if not qualified:
        full = f"forbidden: {message}"
    elif a.name:
        full = f'{qualified} "{a.name}" is forbidden: {message}'
    else:
        full = f"{qualified} is forbidden: {message}"
    details: Obj = {"kind": a.resource}
    if a.name:
        details["name"] = a.name
    if a.api_group:
        details["group"] = a.api_group
    return ApiError(403, "Forbidden", full, details)
