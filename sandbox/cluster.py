"""The emulated cluster's object store: a generic, thread-safe, in-memory API server core.

Objects are plain dicts (exactly what the JSON API serves), kept per
``(group/version/resource, namespace, name)``. Every write bumps one global resourceVersion
and fans a watch event out to subscribers. Nothing here speaks HTTP (see ``server.py``) or
knows about apps semantics (seeding lives in ``seed.py``; controllers plug into :meth:`Cluster.tick`).

The HTTP server runs in its own thread while tests and controllers may touch the cluster from
others, so every public method takes the cluster's lock and hands out deep copies.
"""

from __future__ import annotations

import builtins
import copy
import functools
import json
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from random import Random
from typing import Any

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]
Controller = Callable[["Cluster", datetime], None]

HISTORY_SIZE = 4096  # watch events kept for resuming a watch from a resourceVersion


# --------------------------------------------------------------------------- resource kinds


@dataclass(frozen=True)
class Subresource:
    """A subresource of a kind (``deployments/scale``), as discovery advertises it.

    ``group``/``version``/``kind`` name what it serves when that is not the parent kind.
    """

    name: str
    verbs: tuple[str, ...]
    kind: str | None = None
    group: str | None = None
    version: str | None = None


_SCALE = Subresource("scale", ("get", "patch", "update"), "Scale", "autoscaling", "v1")
_STATUS = Subresource("status", ("get", "patch", "update"))


@dataclass(frozen=True)
class ResourceKind:
    """One served resource (what discovery advertises and routing resolves)."""

    group: str
    version: str
    resource: str  # plural, as in URLs
    kind: str
    singular: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("get", "list", "watch", "create", "update", "patch", "delete")
    has_generation: bool = False  # metadata.generation is bumped when spec changes
    # fields usable in a fieldSelector besides metadata.name and metadata.namespace
    field_labels: tuple[str, ...] = ()
    subresources: tuple[Subresource, ...] = ()
    # False: a PUT must carry metadata.resourceVersion (the apiserver's AllowUnconditionalUpdate)
    unconditional_update: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvr(self) -> str:
        return f"{self.group}/{self.version}/{self.resource}"

    @property
    def qualified(self) -> str:
        """``deployments.apps`` / ``pods``: how Status messages name a resource."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


NAMESPACES = ResourceKind(
    "", "v1", "namespaces", "Namespace", "namespace", namespaced=False, short_names=("ns",),
    field_labels=("status.phase",),
)
PODS = ResourceKind(
    "", "v1", "pods", "Pod", "pod", short_names=("po",), categories=("all",),
    field_labels=("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                  "spec.serviceAccountName", "status.phase", "status.podIP",
                  "status.nominatedNodeName"),
    subresources=(Subresource("log", ("get",)), _STATUS),
)
EVENTS = ResourceKind(
    "", "v1", "events", "Event", "event", short_names=("ev",),
    field_labels=("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                  "involvedObject.uid", "involvedObject.apiVersion",
                  "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                  "reportingComponent", "type"),
)
DEPLOYMENTS = ResourceKind(
    "apps", "v1", "deployments", "Deployment", "deployment", short_names=("deploy",),
    categories=("all",), has_generation=True, subresources=(_SCALE, _STATUS),
)
REPLICASETS = ResourceKind(
    "apps", "v1", "replicasets", "ReplicaSet", "replicaset", short_names=("rs",),
    categories=("all",), has_generation=True, field_labels=("status.replicas",),
    subresources=(_SCALE, _STATUS),
)

JOBS = ResourceKind(
    "batch", "v1", "jobs", "Job", "job", categories=("all",), has_generation=True,
    field_labels=("status.successful",), subresources=(_STATUS,),
)
CRONJOBS = ResourceKind(
    "batch", "v1", "cronjobs", "CronJob", "cronjob", short_names=("cj",), categories=("all",),
    has_generation=True, subresources=(_STATUS,),
)

# Leader election's lock. Like the real registry, a Lease update must say which version it replaces.
LEASES = ResourceKind(
    "coordination.k8s.io", "v1", "leases", "Lease", "lease", unconditional_update=False,
)

KINDS: tuple[ResourceKind, ...] = (NAMESPACES, PODS, EVENTS, DEPLOYMENTS, REPLICASETS, JOBS, CRONJOBS,
                                   LEASES)


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An API failure that the server renders as a ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, kind: ResourceKind, name: str) -> ApiError:
        return cls(404, "NotFound", f'{kind.qualified} "{name}" not found',
                   _details(kind, name))

    @classmethod
    def already_exists(cls, kind: ResourceKind, name: str) -> ApiError:
        return cls(409, "AlreadyExists", f'{kind.qualified} "{name}" already exists',
                   _details(kind, name))

    @classmethod
    def conflict(cls, kind: ResourceKind, name: str) -> ApiError:
        return cls(409, "Conflict",
                   f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has '
                   "been modified; please apply your changes to the latest version and try again",
                   _details(kind, name))

    @classmethod
    def invalid(cls, kind: ResourceKind, name: str, field_path: str, problem: str) -> ApiError:
        qualified_kind = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
        details = _details(kind, name) | {"causes": [
            {"reason": "FieldValueInvalid", "message": problem, "field": field_path}]}
        return cls(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {field_path}: {problem}',
                   details)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def expired(cls, message: str) -> ApiError:
        return cls(410, "Expired", message)


def _details(kind: ResourceKind, name: str) -> Obj:
    details: Obj = {"name": name, "kind": kind.resource}
    if kind.group:
        details["group"] = kind.group
    return details


# --------------------------------------------------------------------------- selectors

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EQUALITY = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split_requirements(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(selector):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return [p for p in parts if p.strip()]


def _label_requirement(text: str) -> Callable[[dict[str, str]], bool]:
    if m := _EQUALITY.match(text):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _SET.match(text):
        key, op, raw = m.groups()
        values = {v.strip() for v in raw.split(",")}
        if not all(re.fullmatch(_VALUE, v) for v in values):
            raise ApiError.bad_request(f"unable to parse requirement: invalid values in {text!r}")
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EXISTS.match(text):
        negate, key = m.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ApiError.bad_request(f"unable to parse requirement: {text.strip()!r}")


def label_matcher(selector: str | None) -> Matcher:
    """A labelSelector string (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``)."""
    requirements = [_label_requirement(r) for r in _split_requirements(selector or "")]

    def match(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return match


def _field_value(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_matcher(kind: ResourceKind, selector: str | None) -> Matcher:
    """A fieldSelector string; only the fields the real API server supports for ``kind``."""
    allowed = {"metadata.name", "metadata.namespace", *kind.field_labels}
    requirements: list[tuple[str, bool, str]] = []
    for text in _split_requirements(selector or ""):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", text)
        if not m:
            raise ApiError.bad_request(f"invalid field selector: {text.strip()!r}")
        path, op, value = m.groups()
        if path not in allowed:
            raise ApiError.bad_request(f"field label not supported: {path}")
        requirements.append((path, op != "!=", value))

    def match(obj: Obj) -> bool:
        return all((_field_value(obj, p) == v) == eq for p, eq, v in requirements)

    return match


# --------------------------------------------------------------------------- watch


@dataclass(frozen=True)
class WatchEvent:
    """One change as stored; ``old`` is None for ADDED, ``new`` the deleted object for DELETED."""

    type: str  # ADDED / MODIFIED / DELETED
    kind: ResourceKind
    namespace: str
    old: Obj | None
    new: Obj
    resource_version: int


@dataclass
class Watch:
    """A subscription: :meth:`Cluster.watch` calls ``notify(type, obj)`` for every match.

    ``notify`` runs under the cluster lock in the writer's thread: it must only hand the
    event over (e.g. ``loop.call_soon_threadsafe``), never block or call back into the cluster.
    """

    kind: ResourceKind
    namespace: str | None
    matches: Matcher
    notify: Callable[[str, Obj], None]

    def translate(self, event: WatchEvent) -> tuple[str, Obj] | None:
        """What this watcher sees: a selector change turns MODIFIED into ADDED or DELETED."""
        if event.kind != self.kind or (self.namespace and event.namespace != self.namespace):
            return None
        now = self.matches(event.new)
        if event.type != "MODIFIED":
            return (event.type, event.new) if now else None
        before = event.old is not None and self.matches(event.old)
        if before and now:
            return "MODIFIED", event.new
        if now:
            return "ADDED", event.new
        if before:
            return "DELETED", event.new
        return None


# --------------------------------------------------------------------------- patches


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422)."""


def json_patch(doc: Obj, operations: Any) -> Obj:
    """RFC 6902 JSON Patch (``application/json-patch+json``)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    result: Any = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation: {op!r}")
        result = _json_patch_op(result, op)
    if not isinstance(result, dict):
        raise PatchError("the patched document is not an object")
    return result


def _json_patch_op(doc: Any, op: Obj) -> Any:
    kind, path = op["op"], op["path"]
    if kind == "test":
        if _pointer_get(doc, path) != op.get("value"):
            raise PatchError(f"test failed at {path}")
        return doc
    if kind == "remove":
        return _pointer_remove(doc, path)
    if kind in ("add", "replace"):
        if "value" not in op:
            raise PatchError(f"{kind} at {path} needs a value")
        if kind == "replace":
            _pointer_get(doc, path)  # must exist
            doc = _pointer_remove(doc, path) if path else doc
        return _pointer_add(doc, path, copy.deepcopy(op["value"]))
    if kind in ("move", "copy"):
        source = op.get("from")
        if not isinstance(source, str):
            raise PatchError(f"{kind} to {path} needs a 'from'")
        value = copy.deepcopy(_pointer_get(doc, source))
        if kind == "move":
            doc = _pointer_remove(doc, source)
        return _pointer_add(doc, path, value)
    raise PatchError(f"unknown JSON patch operation {kind!r}")


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _step(container: Any, token: str, path: str, *, append: bool = False) -> int | str:
    """The dict key or list index ``token`` names in ``container``."""
    if isinstance(container, dict):
        return token
    if isinstance(container, list):
        if append and token == "-":
            return len(container)
        if token.isdigit() and int(token) <= len(container) - (0 if append else 1):
            return int(token)
    raise PatchError(f"path {path} does not exist")


def _pointer_get(doc: Any, path: str) -> Any:
    for token in _tokens(path):
        key = _step(doc, token, path)
        if isinstance(doc, dict) and key not in doc:
            raise PatchError(f"path {path} does not exist")
        doc = doc[key]  # type: ignore[index]
    return doc


def _parent(doc: Any, path: str) -> tuple[Any, str]:
    tokens = _tokens(path)
    if not tokens:
        raise PatchError("the whole document cannot be removed")
    parent_path = "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens[:-1])
    return _pointer_get(doc, parent_path), tokens[-1]


def _pointer_add(doc: Any, path: str, value: Any) -> Any:
    if path == "":
        return value
    parent, token = _parent(doc, path)
    key = _step(parent, token, path, append=True)
    if isinstance(parent, list):
        parent.insert(int(key), value)
    else:
        parent[key] = value
    return doc


def _pointer_remove(doc: Any, path: str) -> Any:
    parent, token = _parent(doc, path)
    key = _step(parent, token, path)
    if isinstance(parent, dict) and key not in parent:
        raise PatchError(f"path {path} does not exist")
    del parent[key]
    return doc


def merge_patch(doc: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch (``application/merge-patch+json``): null deletes a key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists that a strategic merge patch merges element-wise, by this key (Kubernetes'
# ``patchMergeKey`` tags, for the kinds served here). Other lists are replaced.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "ports": "containerPort", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "volumes": "name", "imagePullSecrets": "name",
    "hostAliases": "ip", "conditions": "type", "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey", "resourceClaims": "name",
    "schedulingGates": "name",
}
MERGED_SCALAR_LISTS = {"finalizers"}  # patchStrategy "merge" on a list of strings: a union


def strategic_merge_patch(doc: Obj, patch: Any) -> Obj:
    """Kubernetes' strategic merge patch (``application/strategic-merge-patch+json``).

    A merge patch where lists of :data:`MERGE_KEYS` merge by key, with the directives
    ``$patch: replace|delete``, ``$retainKeys``, ``$deleteFromPrimitiveList/<list>`` and
    ``$setElementOrder/<list>`` (accepted; order is kept as it is).
    """
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _smp_map(doc, patch)


def _smp_map(original: Obj, patch: Obj) -> Obj:
    if patch.get("$patch") == "replace":
        return _without_directives(patch)
    result = copy.deepcopy(original)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name) or [] if v not in value]
        elif key.startswith("$"):
            continue
        elif value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        else:
            result[key] = _smp_value(key, result.get(key), value)
    if isinstance(retain := patch.get("$retainKeys"), list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_value(key: str, old: Any, new: Any) -> Any:
    if isinstance(new, dict) and isinstance(old, dict):
        return _smp_map(old, new)
    if isinstance(new, list) and isinstance(old, list):
        if key in MERGE_KEYS:
            return _smp_list(old, new, MERGE_KEYS[key])
        if key in MERGED_SCALAR_LISTS:
            return old + [v for v in new if v not in old]
    return _without_directives(new)


def _smp_list(old: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_without_directives(p) for p in patch
                if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    result = copy.deepcopy(old)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"an element of a list merged by {merge_key!r} lacks it: {item!r}")
        at = next((i for i, e in enumerate(result)
                   if isinstance(e, dict) and e.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del result[at]
        elif at is None:
            result.append(_without_directives(item))
        else:
            result[at] = _smp_map(result[at], item)
    return result


def _without_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_without_directives(v) for v in value]
    return value


# --------------------------------------------------------------------------- the cluster


def utc_now() -> datetime:
    return datetime.now(UTC)


def clone(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars); several times faster than
    :func:`copy.deepcopy`, which matters as every read hands out copies."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _with_owners(obj: Obj, owners: list[Obj]) -> Obj:
    obj["metadata"]["ownerReferences"] = owners
    if not owners:
        del obj["metadata"]["ownerReferences"]
    return obj


def _typed(kind: ResourceKind, obj: Obj) -> Obj:
    """``obj`` with apiVersion and kind set, first (as the API server serializes them)."""
    rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    return {"apiVersion": kind.api_version, "kind": kind.kind, **rest}


_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"  # Go's layout, as the apiserver names it


def micro_time(value: Any, kind: ResourceKind) -> str:
    """A metav1.MicroTime as the apiserver reads and writes it.

    Parsing is Go's ``time.Parse(RFC3339Micro, …)``: exactly six fraction digits and a zone
    (Python's ``isoformat()`` drops the fraction when it is zero, and the real apiserver refuses
    that); the answer is always UTC with ``Z``.
    """
    text = value if isinstance(value, str) else json.dumps(value)
    if not isinstance(value, str) or not _MICRO_TIME.match(value):
        raise ApiError.bad_request(
            f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
            f'parsing time {text} as "{RFC3339_MICRO}": cannot parse {text} as RFC3339Micro')
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _validated(kind: ResourceKind, obj: Obj) -> Obj:
    """Kind-specific decoding and validation the apiserver does before storing (Leases only)."""
    if kind.resource != "leases":
        return obj
    name = (obj.get("metadata") or {}).get("name") or ""
    spec = obj.get("spec")
    if spec is None:
        return obj
    if not isinstance(spec, dict):
        raise ApiError.bad_request(f'{kind.kind} in version "v1" cannot be handled as a {kind.kind}: '
                                   "spec must be an object")
    for field_name in ("acquireTime", "renewTime"):
        if spec.get(field_name) is not None:
            spec[field_name] = micro_time(spec[field_name], kind)
    for field_name, least in (("leaseDurationSeconds", 1), ("leaseTransitions", 0)):
        value = spec.get(field_name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError.bad_request(
                f'{kind.kind} in version "v1" cannot be handled as a {kind.kind}: '
                f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                f"LeaseSpec.spec.{field_name} of type int32")
        if value < least:
            problem = "must be greater than 0" if least else "must be greater than or equal to 0"
            raise ApiError.invalid(kind, name, f"spec.{field_name}", f"Invalid value: {value}: {problem}")
    return obj


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names


@dataclass
class Cluster:
    """The whole emulated cluster state.

    ``clock`` gives "now" for timestamps; controllers registered with :meth:`add_controller`
    run on every :meth:`tick` (the server ticks periodically) to move the world forward.
    """

    clock: Callable[[], datetime] = utc_now
    seed: int = 0
    kinds: tuple[ResourceKind, ...] = KINDS
    _objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict, init=False)
    _rv: int = field(default=0, init=False)
    _history: deque[WatchEvent] = field(
        default_factory=lambda: deque(maxlen=HISTORY_SIZE), init=False)
    _watches: list[Watch] = field(default_factory=list, init=False)
    _controllers: list[Controller] = field(default_factory=list, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _random: Random = field(init=False)

    def __post_init__(self) -> None:
        self._random = Random(self.seed)

    # ----------------------------------------------------------------- lookup helpers

    def kind(self, group: str, version: str, resource: str) -> ResourceKind | None:
        for k in self.kinds:
            if (k.group, k.version, k.resource) == (group, version, resource):
                return k
        return None

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def now(self) -> datetime:
        return self.clock()

    def random_suffix(self, length: int = 5) -> str:
        with self._lock:
            return "".join(self._random.choice(_SUFFIX_ALPHABET) for _ in range(length))

    def new_uid(self) -> str:
        with self._lock:
            return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    # ----------------------------------------------------------------- reads

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> Obj:
        with self._lock:
            obj = self._objects.get(self._key(kind, namespace, name))
            if obj is None:
                raise ApiError.not_found(kind, name)
            return clone(obj)

    def list(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        """Matching objects sorted by (namespace, name), and the list's resourceVersion."""
        matches = self._matcher(kind, label_selector, field_selector)
        with self._lock:
            items = [clone(o) for o in self._scan(kind, namespace) if matches(o)]
            return items, str(self._rv)

    def _scan(self, kind: ResourceKind, namespace: str | None) -> Iterable[Obj]:
        keys = sorted(k for k in self._objects if k[0] == kind.gvr
                      and (not namespace or not kind.namespaced or k[1] == namespace))
        return (self._objects[k] for k in keys)

    def _matcher(self, kind: ResourceKind, labels: str | None, fields: str | None) -> Matcher:
        by_label, by_field = label_matcher(labels), field_matcher(kind, fields)
        return lambda obj: by_label(obj) and by_field(obj)

    # ----------------------------------------------------------------- writes

    def create(self, kind: ResourceKind, obj: Obj, namespace: str | None = None) -> Obj:
        """Store a new object, filling apiVersion/kind/uid/timestamps like the API server."""
        obj = clone(obj)
        meta = obj.setdefault("metadata", {})
        for field_name, expected in (("apiVersion", kind.api_version), ("kind", kind.kind)):
            if obj.get(field_name, expected) != expected:
                raise ApiError.bad_request(
                    f"the {field_name} in the data ({obj[field_name]}) does not match the "
                    f"expected {field_name} ({expected})")
        with self._lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + self.random_suffix()
            name = meta.get("name") or ""
            self._validate_name(kind, name)
            ns = self._namespace_for(kind, meta, namespace)
            key = self._key(kind, ns, name)
            if key in self._objects:
                raise ApiError.already_exists(kind, name)
            obj = _typed(kind, _validated(kind, obj))
            meta.setdefault("uid", self.new_uid())
            if not meta.get("creationTimestamp"):  # the seed may backdate; clients send null
                meta["creationTimestamp"] = rfc3339(self.now())
            if kind.has_generation:
                meta["generation"] = 1
            return self._commit("ADDED", kind, key, None, obj)

    def update(self, kind: ResourceKind, obj: Obj) -> Obj:
        """Replace an object. A stale metadata.resourceVersion (if given) is a Conflict."""
        obj = clone(obj)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or ""
        with self._lock:
            key = self._key(kind, meta.get("namespace"), name)
            old = self._objects.get(key)
            if old is None:
                raise ApiError.not_found(kind, name)
            given = meta.get("resourceVersion")
            if not given and not kind.unconditional_update:
                raise ApiError.invalid(kind, name, "metadata.resourceVersion",
                                       "Invalid value: 0x0: must be specified for an update")
            if given and given != old["metadata"]["resourceVersion"]:
                raise ApiError.conflict(kind, name)
            for immutable in ("uid", "creationTimestamp", "namespace"):
                if immutable in old["metadata"]:
                    meta[immutable] = old["metadata"][immutable]
            obj = _typed(kind, _validated(kind, obj))
            if kind.has_generation:
                generation = old["metadata"].get("generation", 1)
                meta["generation"] = generation + (obj.get("spec") != old.get("spec"))
            return self._commit("MODIFIED", kind, key, old, obj)

    def modify(self, kind: ResourceKind, namespace: str | None, name: str,
               change: Callable[[Obj], Obj]) -> Obj:
        """Read, ``change`` and write back one object atomically (PATCH, controllers).

        A resourceVersion that ``change`` sets is a precondition (Conflict when stale).
        """
        with self._lock:
            current = self.get(kind, namespace, name)
            changed = change(clone(current))
            meta = changed.setdefault("metadata", {})
            meta["name"] = name
            if kind.namespaced:
                meta["namespace"] = current["metadata"]["namespace"]
            return self.update(kind, changed)

    def delete(self, kind: ResourceKind, namespace: str | None, name: str, *,
               propagation: str = "Background") -> Obj:
        """Remove an object at once (no finalizers or grace periods yet).

        Like the garbage collector, also removes what it owns (and a namespace's contents);
        ``propagation="Orphan"`` leaves dependents, dropping their owner reference instead.
        """
        with self._lock:
            key = self._key(kind, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise ApiError.not_found(kind, name)
            deleted = self._commit("DELETED", kind, key, old, clone(old))
            self._collect_dependents(old, orphan=propagation == "Orphan")
            return deleted

    def _collect_dependents(self, owner: Obj, *, orphan: bool) -> None:
        uid = owner["metadata"]["uid"]
        namespace = owner["metadata"]["name"] if owner["kind"] == "Namespace" else None
        for key in list(self._objects):
            obj = self._objects.get(key)
            if obj is None:
                continue  # already collected
            gvr, ns, name = key
            kind = next(k for k in self.kinds if k.gvr == gvr)
            refs = obj["metadata"].get("ownerReferences") or []
            if namespace is not None and ns == namespace:
                self.delete(kind, ns, name)
            elif any(ref.get("uid") == uid for ref in refs):
                if orphan:
                    kept = [ref for ref in refs if ref.get("uid") != uid]
                    self.modify(kind, ns, name, functools.partial(_with_owners, owners=kept))
                else:
                    self.delete(kind, ns, name)

    def _commit(self, type_: str, kind: ResourceKind, key: tuple[str, str, str],
                old: Obj | None, new: Obj) -> Obj:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        if type_ == "DELETED":
            self._objects.pop(key)
        else:
            self._objects[key] = new
        event = WatchEvent(type_, kind, key[1], old, clone(new), self._rv)
        self._history.append(event)
        for watch in list(self._watches):
            self._deliver(watch, event)
        return clone(new)

    def _key(self, kind: ResourceKind, namespace: str | None, name: str) -> tuple[str, str, str]:
        return kind.gvr, (namespace or "") if kind.namespaced else "", name

    def _namespace_for(self, kind: ResourceKind, meta: Obj, namespace: str | None) -> str:
        if not kind.namespaced:
            meta.pop("namespace", None)
            return ""
        ns = namespace or meta.get("namespace") or ""
        if meta.get("namespace") and meta["namespace"] != ns:
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request")
        if not ns:
            raise ApiError.bad_request("an empty namespace may not be set during creation")
        if self._key(NAMESPACES, None, ns) not in self._objects:
            raise ApiError.not_found(NAMESPACES, ns)
        meta["namespace"] = ns
        return ns

    def _validate_name(self, kind: ResourceKind, name: str) -> None:
        if not name:
            raise ApiError.invalid(kind, name, "metadata.name",
                                   "Required value: name or generateName is required")
        if len(name) > 253 or not _NAME.match(name):
            raise ApiError.invalid(
                kind, name, "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character")

    # ----------------------------------------------------------------- watch

    def watch(
        self,
        kind: ResourceKind,
        namespace: str | None,
        notify: Callable[[str, Obj], None],
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Watch:
        """Subscribe to changes, first replaying what the client has not seen.

        No (or ``"0"``) resourceVersion: synthetic ADDED events for every current match, as the
        API server does. Otherwise the changes after that version; :class:`ApiError` 410 Expired
        when it is older than the kept history.
        """
        watch = Watch(kind, namespace if kind.namespaced else None,
                      self._matcher(kind, label_selector, field_selector), notify)
        with self._lock:
            if resource_version in (None, "", "0"):
                for obj in self._scan(kind, watch.namespace):
                    if watch.matches(obj):
                        notify("ADDED", clone(obj))
            else:
                for event in self._history_after(resource_version):
                    self._deliver(watch, event)
            self._watches.append(watch)
        return watch

    @property
    def watchers(self) -> int:
        """How many watches are open."""
        with self._lock:
            return len(self._watches)

    def unwatch(self, watch: Watch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def _history_after(self, resource_version: str) -> builtins.list[WatchEvent]:
        try:
            since = int(resource_version)
        except ValueError:
            raise ApiError.bad_request(f"invalid resource version: {resource_version!r}") from None
        dropped = len(self._history) == self._history.maxlen
        if dropped and since < self._history[0].resource_version - 1:
            oldest = self._history[0].resource_version - 1
            raise ApiError.expired(f"too old resource version: {since} ({oldest})")
        return [e for e in self._history if e.resource_version > since]

    @staticmethod
    def _deliver(watch: Watch, event: WatchEvent) -> None:
        seen = watch.translate(event)
        if seen:
            watch.notify(seen[0], clone(seen[1]))

    # ----------------------------------------------------------------- time

    def add_controller(self, controller: Controller) -> None:
        """Run ``controller(cluster, now)`` on every tick (it may read and write the cluster)."""
        with self._lock:
            self._controllers.append(controller)

    @property
    def controllers(self) -> tuple[Controller, ...]:
        with self._lock:
            return tuple(self._controllers)

    def tick(self, now: datetime | None = None) -> None:
        """Let every controller move the world to ``now`` (default: the clock)."""
        moment = now or self.now()
        with self._lock:
            for controller in list(self._controllers):
                controller(self, moment)
