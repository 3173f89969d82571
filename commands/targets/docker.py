"""The Docker adapter: a service in an env is one container on a Docker host.

Revisions, as on Kubernetes
---------------------------
A deploy never changes a container (Docker cannot change an image in place): it creates a new one
from the running one's configuration and the new image, and *retires* the old one: stopped,
restart policy ``no`` (so a daemon restart cannot bring it back next to the new one) and renamed
``<name>--rev<N>``. Revisions are numbered as Deployment revisions are, and a failed deploy is a
revision too, so ``!history`` and ``!rollback [revision]`` read the same on both platforms:

* The running container's number is its ``opsbot.revision`` label, but at least one more than
  the highest retired one (a container started by hand has no label: revision 1).
* A retired container's number is in its *name*, the one thing Docker lets us change later. That
  is what makes ``kubectl rollout undo`` numbering possible: a rollback starts the retired
  container again under the service's name, so it becomes the newest revision (undo to 1 of
  1, 2, 3 gives 2, 3, 4 with 4 running the image of 1), and the one it replaced is retired.
* Every container opsbot creates also records the revisions before it (``opsbot.history``:
  revision, image, change-cause, time), so a retired container that was pruned still shows in
  ``!history`` and a rollback to it recreates it from its image and the running configuration.
  A recorded revision whose image some container still runs is not shown twice.

The port's shape, for Docker
----------------------------
``set_image`` pulls the image (or takes the host's local copy when no registry answers, and says
which), creates the new container (so configuration errors leave the old one alone), stops the
old one (ports and the host network would conflict otherwise), retires it, starts the new one and
returns the new revision as the generation. ``progress`` reports it progressing until healthy:
the image's HEALTHCHECK says ``healthy``, or without one it has run ``health_wait_seconds``;
failed when it exits, restarts, turns unhealthy or could not start (reason, exit code and the
last log lines). The core then calls ``rollback(None)``, which starts the retired one again.
On success the retired containers beyond :data:`HISTORY_LIMIT` are removed, and all of them when
the target has ``keep_previous: false``.

What comes from where in the new container: everything the old container set itself (env, mounts,
ports, labels, restart policy, network, resources, a healthcheck or command given at ``docker
run``) is copied; what it only inherited from its image (the image's ENV, CMD, ENTRYPOINT,
HEALTHCHECK, labels, WORKDIR, USER) is left for the new image to supply, so a new version's own
defaults win. Anonymous volumes are handed over by name, as compose does.

The SDK blocks, so every call runs in a worker thread with a request timeout. Faults become a
:class:`TargetState` with ``error`` in ``get_state`` and a typed :class:`PlatformError` elsewhere,
with a short message that names the host ("cannot reach Docker at unix:///…: no such socket").
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import os
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import docker
import requests
from docker.errors import APIError, DockerException
from docker.errors import NotFound as DockerNotFound

from commands.logs import LogLine, LogQuery, parse_k8s_line
from commands.models import (
    EventSummary,
    PodState,
    RevisionInfo,
    RolloutProgress,
    TargetState,
)
from commands.redact import Redactor
from commands.targets.base import JobRun, NotFound, PlatformError, PruneResult, Unreachable, Unsupported
from config.settings import DockerTarget

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HOST = "unix:///var/run/docker.sock"

LABEL_REVISION = "opsbot.revision"
LABEL_CAUSE = "opsbot.change-cause"
LABEL_IMAGE = "opsbot.image"
LABEL_SERVICE = "opsbot.container"  # the service container this revision belongs to
LABEL_HISTORY = "opsbot.history"  # JSON: the revisions before this one when it was created
LABEL_RESTART = "opsbot.restart-policy"  # JSON: the policy it had before it was retired

HISTORY_LIMIT = 10  # retired containers kept, as a Deployment's revisionHistoryLimit
LOG_LINES_ON_FAILURE = 3
LOG_BATCH = 512  # log chunks read per thread hop

_RETIRED = re.compile(r"^(?P<name>.+)--rev(?P<rev>\d+)$")
_ANONYMOUS_VOLUME = re.compile(r"^[0-9a-f]{64}$")
_ZERO_TIME = "0001-01-01T00:00:00Z"


# --------------------------------------------------------------------------- small helpers


def image_version(image: str | None) -> str | None:
    """The tag of ``repo/name:tag`` (not a registry port); ``latest`` when untagged."""
    if not image:
        return None
    if image.startswith("sha256:"):  # run by image ID
        return image[7:19]
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    return digest[:19] if digest else "latest"


def parse_time(text: str | None) -> datetime | None:
    """Docker's RFC 3339 times (nanoseconds, ``Z``); None for its zero time."""
    if not text or text.startswith("0001-01-01"):
        return None
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text)
    if m is None:
        return None
    frac = (m[2] or "0")[:6].ljust(6, "0")
    zone = m[3] if m[3] and m[3] != "Z" else "+00:00"
    return datetime.fromisoformat(f"{m[1]}.{frac}{zone}").astimezone(UTC)


def _age(seconds: float) -> str:
    s = max(int(seconds), 0)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _squeeze(lines: list[str], width: int = 120) -> list[str]:
    """Log lines for a one-line message: clipped, repeats counted (``boom (×3)``)."""
    out: list[str] = []
    for line, group in itertools.groupby(_clip(x, width) for x in lines):
        n = len(list(group))
        out.append(f"{line} (×{n})" if n > 1 else line)
    return out


def _name(container: dict[str, Any]) -> str:
    """A container's name without Docker's leading slash (inspect or list form)."""
    if "Name" in container:
        return str(container["Name"]).lstrip("/")
    return str((container.get("Names") or ["?"])[0]).lstrip("/")


def _labels(container: dict[str, Any]) -> dict[str, str]:
    if "Config" in container:
        return dict((container["Config"] or {}).get("Labels") or {})
    return dict(container.get("Labels") or {})


def _label_revision(container: dict[str, Any]) -> int | None:
    value = _labels(container).get(LABEL_REVISION, "")
    return int(value) if value.isdigit() else None


def _image_ref(container: dict[str, Any]) -> str | None:
    """The image reference a container was made from (as deployed, not its ID)."""
    labels = _labels(container)
    if labels.get(LABEL_IMAGE):
        return labels[LABEL_IMAGE]
    if "Config" in container:
        return (container["Config"] or {}).get("Image")
    return container.get("Image")


def _created(container: dict[str, Any]) -> datetime | None:
    value = container.get("Created")
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    return parse_time(value) if isinstance(value, str) else None


# --------------------------------------------------------------------------- faults


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and everything it wraps: causes, contexts, exception arguments, ``reason``."""
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        nested = [e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())]
        todo += [x for x in nested if isinstance(x, BaseException)]


def network_problem(err: BaseException, timeout: float) -> str:
    """Why a Docker host could not be reached, in a few words."""
    for e in _causes(err):
        if isinstance(e, (requests.exceptions.Timeout, socket.timeout, TimeoutError)):
            return f"no answer within {timeout:g} s"
        if isinstance(e, socket.gaierror):
            return "unknown host"
        if isinstance(e, FileNotFoundError):
            return "no such socket (is dockerd running?)"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused (is dockerd running?)"
        if isinstance(e, PermissionError):
            return "permission denied (is this user allowed to use the Docker socket?)"
        if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "host unreachable"
    text = str(err)
    text = re.sub(r"^Error while fetching server API version: ", "", text)
    return _clip(text, 160) or type(err).__name__


def _is_network(err: BaseException) -> bool:
    if isinstance(err, APIError):
        return False
    return any(isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, OSError))
               for e in _causes(err)) or (isinstance(err, DockerException) and "API version" in str(err))


def _explanation(err: APIError) -> str:
    text = err.explanation if isinstance(err.explanation, str) and err.explanation else str(err)
    if isinstance(text, bytes):  # pragma: no cover - older SDKs
        text = text.decode("utf-8", "replace")
    return _clip(text, 300)


def pull_problem(text: str) -> str:
    """Why a pull failed, in a few words (the daemon's message quotes the whole URL and resolver)."""
    text = re.sub(r"^Docker at \S+ (?:refused|failed) to pull image \S+(?: \(\d+\))?: |^Docker at \S+: ", "", text)
    url = re.search(r'"https?://([^/"]+)', text)
    registry = url[1] if url else "the registry"
    if m := re.search(r"lookup (\S+?)(?: on \S+)?: no such host", text):
        return f"{m[1]}: unknown host"
    if "connection refused" in text:
        return f"{registry}: connection refused"
    if "i/o timeout" in text or "Client.Timeout" in text or "TLS handshake timeout" in text:
        return f"{registry}: no answer"
    if "pull access denied" in text:
        return "pull access denied (no such repository, or it needs docker login)"
    if "manifest unknown" in text or re.search(r"manifest for \S+ not found", text):
        return f"no such tag in {registry}"
    return _clip(text, 160)


def platform_error(err: BaseException, host: str, what: str, verb: str, timeout: float) -> PlatformError:
    """A typed, short, user-facing error for a fault while ``verb``-ing ``what`` on ``host``."""
    if isinstance(err, PlatformError):
        return err
    if isinstance(err, DockerNotFound):
        return NotFound(f"{what} not found on Docker at {host}")
    if isinstance(err, APIError):
        code = err.status_code
        if code == 409:
            return PlatformError(f"Docker at {host} refused to {verb} {what}: {_explanation(err)}")
        if code is not None and 400 <= code < 500:
            return PlatformError(f"Docker at {host} refused to {verb} {what} ({code}): {_explanation(err)}")
        return PlatformError(f"Docker at {host} failed to {verb} {what} ({code}): {_explanation(err)}")
    if _is_network(err):
        return Unreachable(f"cannot reach Docker at {host}: {network_problem(err, timeout)}")
    if isinstance(err, DockerException):
        return PlatformError(f"Docker at {host}: {_clip(str(err), 300)}")
    return PlatformError(f"cannot {verb} {what} on Docker at {host}: {_clip(str(err), 300)}")


# --------------------------------------------------------------------------- one operation


@dataclass
class _Rev:
    """One revision of a service container: a container (running or retired) or a record."""

    revision: int
    image: str | None
    change_cause: str | None
    created_at: datetime | None
    container: dict[str, Any] | None = None  # list form; None: only recorded
    current: bool = False

    def info(self, running: bool = False) -> RevisionInfo:
        return RevisionInfo(revision=self.revision, image=self.image, version=image_version(self.image),
                            change_cause=self.change_cause, created_at=self.created_at, current=self.current,
                            replicas=1 if self.current and running else 0)

    def record(self) -> dict[str, Any]:
        return {"revision": self.revision, "image": self.image, "change_cause": self.change_cause,
                "created": self.created_at.isoformat() if self.created_at else None}


@dataclass
class _Family:
    """The service container (if any), its retired revisions and recorded ones, by revision."""

    name: str
    current: dict[str, Any] | None  # inspect form
    revisions: dict[int, _Rev] = field(default_factory=dict)

    @property
    def current_revision(self) -> int | None:
        return next((r.revision for r in self.revisions.values() if r.current), None)

    def retired(self) -> list[_Rev]:
        return sorted((r for r in self.revisions.values() if r.container is not None and not r.current),
                      key=lambda r: r.revision)

    def ordered(self) -> list[_Rev]:
        return [self.revisions[k] for k in sorted(self.revisions)]

    def history_label(self) -> str:
        """What a container made now records about the revisions before it."""
        records = [r.record() for r in self.ordered()][-HISTORY_LIMIT:]
        return json.dumps(records, separators=(",", ":"))


@dataclass
class _Watch:
    """What set_image/rollback learnt that progress should say (lost on restart: harmless)."""

    note: str | None = None  # where the image came from
    start_error: str | None = None


class _Session:
    """One host's client and how to name things in messages; all methods block."""

    def __init__(self, api: docker.APIClient, host: str, target: DockerTarget, timeout: float):
        self.api, self.host, self.target, self.timeout = api, host, target, timeout
        self.name = target.container
        self.what = f"container {target.container}"

    # -- reading

    def inspect(self, ref: str | None = None) -> dict[str, Any] | None:
        try:
            return self.api.inspect_container(ref or self.name)  # type: ignore[no-any-return]
        except DockerNotFound:
            return None

    def family(self) -> _Family:
        """The service container, its retired revisions and the recorded ones."""
        current = self.inspect()
        pattern = f"^/?{re.escape(self.name)}--rev[0-9]+$"
        listed = self.api.containers(all=True, filters={"name": pattern})
        fam = _Family(self.name, current)
        for c in listed:
            m = _RETIRED.match(_name(c))
            if m is None or m["name"] != self.name:
                continue
            rev = int(m["rev"])
            fam.revisions[rev] = _Rev(rev, _image_ref(c), _labels(c).get(LABEL_CAUSE), _created(c), container=c)
        if current is not None:
            top = max(fam.revisions, default=0)
            rev = max(_label_revision(current) or 1, top + 1)
            labels = _labels(current)
            fam.revisions[rev] = _Rev(rev, _image_ref(current), labels.get(LABEL_CAUSE), _created(current),
                                      container=current, current=True)
            # Revisions recorded when it was made, whose container is gone (pruned).
            images = {r.image for r in fam.revisions.values()}
            for rec in _records(labels.get(LABEL_HISTORY)):
                if rec.revision not in fam.revisions and rec.image not in images:
                    fam.revisions[rec.revision] = rec
                    images.add(rec.image)
        return fam

    def logs_tail(self, ref: str, lines: int = 4 * LOG_LINES_ON_FAILURE) -> list[str]:
        try:
            raw = self.api.logs(ref, tail=lines, timestamps=False)
        except (APIError, requests.exceptions.RequestException):
            return []
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return [line for line in (x.strip() for x in text.splitlines()) if line][-lines:]

    # -- images

    def pull(self, image: str) -> None:
        """Pull ``image``; raises APIError (or DockerException) with the registry's message."""
        for message in self.api.pull(image, stream=True, decode=True):
            if isinstance(message, dict) and message.get("error"):
                raise DockerException(str(message.get("error")))

    def local_image(self, image: str) -> dict[str, Any] | None:
        try:
            return self.api.inspect_image(image)  # type: ignore[no-any-return]
        except DockerNotFound:
            return None

    # -- writing

    def stop(self, container: dict[str, Any]) -> None:
        state = container.get("State") or {}
        if state.get("Paused"):
            self.api.unpause(container["Id"])
        if state.get("Running") or state.get("Restarting") or state.get("Paused"):
            grace = (container.get("Config") or {}).get("StopTimeout")
            self.api.stop(container["Id"], timeout=int(grace) if grace is not None else 10)

    def retire(self, container: dict[str, Any], revision: int) -> bool:
        """Stop ``container``, keep its restart policy in mind, rename it ``<name>--rev<N>``.

        False when it removed itself on stopping (``--rm``): then only the record remains.
        """
        self.stop(container)
        if (container.get("HostConfig") or {}).get("AutoRemove"):
            self._wait_gone(container["Id"])
            return False
        policy = (container.get("HostConfig") or {}).get("RestartPolicy") or {}
        if policy.get("Name") not in (None, "", "no"):
            self.api.update_container(container["Id"], restart_policy={"Name": "no", "MaximumRetryCount": 0})
        self.api.rename(container["Id"], f"{self.name}--rev{revision}")
        return True

    def _wait_gone(self, ref: str, seconds: float = 10) -> None:
        for _ in range(int(seconds * 10)):
            if self.inspect(ref) is None:
                return
            threading.Event().wait(0.1)

    def start(self, ref: str) -> str | None:
        """Start ``ref``; the daemon's message when it cannot (left for progress to report)."""
        try:
            self.api.start(ref)
        except APIError as err:
            if err.status_code is not None and err.status_code >= 500 or err.status_code == 400:
                return _explanation(err)
            raise
        return None

    def restart_policy_of(self, container: dict[str, Any] | None) -> dict[str, Any] | None:
        if container is None:
            return None
        policy = (container.get("HostConfig") or {}).get("RestartPolicy") or {}
        return policy if policy.get("Name") not in (None, "") else None


def _records(text: str | None) -> list[_Rev]:
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return []
    out = []
    for d in data if isinstance(data, list) else []:
        if isinstance(d, dict) and isinstance(d.get("revision"), int):
            created = d.get("created")
            out.append(_Rev(d["revision"], d.get("image"), d.get("change_cause"),
                            datetime.fromisoformat(created) if isinstance(created, str) else None))
    return out


# --------------------------------------------------------------------------- configuration


def clone_config(current: dict[str, Any], old_image: dict[str, Any] | None, image: str,
                 labels: dict[str, str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The create body for a container like ``current`` running ``image``.

    What ``current`` set itself is copied; what it only inherited from ``old_image`` (its image,
    by ID) is left out so the new image supplies its own. Without the old image everything is
    copied (a user's setting is never dropped). Returns the body and the networks to connect
    after creation (the API takes one at create time).
    """
    cfg = dict(current.get("Config") or {})
    base = (old_image or {}).get("Config") or {}
    known = old_image is not None

    def own(key: str) -> Any:
        value = cfg.get(key)
        return None if known and value == base.get(key) else value

    body: dict[str, Any] = {"Image": image}
    env = [e for e in cfg.get("Env") or [] if not (known and e in set(base.get("Env") or []))]
    if env:
        body["Env"] = env
    entrypoint = own("Entrypoint")
    if entrypoint is not None:
        body["Entrypoint"] = entrypoint
        body["Cmd"] = cfg.get("Cmd")  # an entrypoint given at run time resets the image's CMD
    elif (cmd := own("Cmd")) is not None:
        body["Cmd"] = cmd
    for key in ("Healthcheck", "WorkingDir", "User", "StopSignal", "Shell"):
        value = own(key)
        if value not in (None, "", []):
            body[key] = value
    for key in ("ExposedPorts", "Volumes"):
        mine = {k: v for k, v in (cfg.get(key) or {}).items() if not (known and k in (base.get(key) or {}))}
        if mine:
            body[key] = mine
    for key in ("Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStdout", "AttachStderr",
                "StopTimeout", "Domainname"):
        if cfg.get(key) not in (None, ""):
            body[key] = cfg[key]
    host_config = dict(current.get("HostConfig") or {})
    network_mode = str(host_config.get("NetworkMode") or "")
    hostname = cfg.get("Hostname")
    if (hostname and not str(current.get("Id", "")).startswith(hostname) and network_mode != "host"
            and not network_mode.startswith("container:")):
        body["Hostname"] = hostname
    body["Labels"] = {
        **{k: v for k, v in (cfg.get("Labels") or {}).items()
           if not k.startswith("opsbot.") and not (known and (base.get("Labels") or {}).get(k) == v)},
        **labels,
    }
    host_config["AutoRemove"] = False  # a retired container must survive being stopped
    # Anonymous volumes keep their data: hand them over by name, as compose does.
    binds = list(host_config.get("Binds") or [])
    bound = {b.split(":")[1] for b in binds if b.count(":") >= 1}
    bound |= {m.get("Target") for m in host_config.get("Mounts") or []}
    for m in current.get("Mounts") or []:
        if (m.get("Type") == "volume" and _ANONYMOUS_VOLUME.match(m.get("Name") or "")
                and m.get("Destination") not in bound):
            binds.append(f"{m['Name']}:{m['Destination']}" + ("" if m.get("RW", True) else ":ro"))
    if binds:
        host_config["Binds"] = binds
    body["HostConfig"] = host_config
    # User-defined networks with their aliases (not the old container's ID) and static IPs.
    networks = (current.get("NetworkSettings") or {}).get("Networks") or {}
    endpoints: dict[str, dict[str, Any]] = {}
    short_id = str(current.get("Id", ""))[:12]
    for net, ep in networks.items():
        if net in ("bridge", "host", "none") or network_mode.startswith("container:"):
            continue
        endpoints[net] = {k: v for k, v in {
            "Aliases": [a for a in ep.get("Aliases") or [] if a != short_id] or None,
            "IPAMConfig": ep.get("IPAMConfig"), "Links": ep.get("Links"), "DriverOpts": ep.get("DriverOpts"),
        }.items() if v}
    primary = network_mode if network_mode in endpoints else next(iter(endpoints), None)
    if primary is not None:
        body["NetworkingConfig"] = {"EndpointsConfig": {primary: endpoints.pop(primary)}}
    return body, endpoints


# --------------------------------------------------------------------------- the platform


class DockerPlatform:
    """The ``Platform`` for services that run as one container on a Docker host."""

    name = "docker"

    def __init__(self, default_host: str | None = None, *, request_timeout: float = 10,
                 pull_timeout: float = 300, redactor: Redactor | None = None):
        self.default_host = default_host
        self.request_timeout = request_timeout
        self.pull_timeout = pull_timeout
        self.redactor = redactor or Redactor()
        self._clients: dict[str, docker.APIClient] = {}
        self._skew: dict[str, timedelta] = {}
        self._watches: dict[tuple[str, str, int], _Watch] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- clients

    def host(self, target: DockerTarget) -> str:
        """The Docker host of ``target``: its own, ``--docker-host``, $DOCKER_HOST, the local socket."""
        return target.host or self.default_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST

    def _client(self, host: str) -> docker.APIClient:
        """The client for ``host``, made on first use (it asks the daemon its API version); blocking."""
        with self._lock:
            api = self._clients.get(host)
        if api is not None:
            return api
        kwargs: dict[str, Any] = {}
        if host.startswith(("tcp://", "https://")) and os.environ.get("DOCKER_TLS_VERIFY"):
            kwargs["tls"] = docker.utils.kwargs_from_env().get("tls")
        api = docker.APIClient(base_url=host, version="auto", timeout=self.request_timeout, **kwargs)
        with self._lock:
            other = self._clients.setdefault(host, api)
        if other is not api:
            api.close()
        return other

    def _daemon_now(self, s: _Session) -> datetime:
        """The daemon's clock (remote hosts may be skewed), measured once per host."""
        skew = self._skew.get(s.host)
        if skew is None:
            try:
                daemon = parse_time(str(s.api.info().get("SystemTime", "")))
            except (APIError, requests.exceptions.RequestException):
                daemon = None
            skew = (daemon - datetime.now(UTC)) if daemon else timedelta(0)
            if abs(skew) < timedelta(seconds=1):
                skew = timedelta(0)
            self._skew[s.host] = skew
        return datetime.now(UTC) + skew

    async def _run(self, target: DockerTarget, verb: str, fn: Callable[[_Session], T],
                   what: str | None = None) -> T:
        """``fn`` with a session, in a thread; faults as a typed PlatformError."""
        host = self.host(target)

        def call() -> T:
            return fn(_Session(self._client(host), host, target, self.request_timeout))

        try:
            return await asyncio.to_thread(call)
        except PlatformError:
            raise
        except (DockerException, requests.exceptions.RequestException, OSError) as err:
            raise platform_error(err, host, what or f"container {target.container}", verb,
                                 self.request_timeout) from err

    async def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for api in clients:
            await asyncio.to_thread(api.close)

    # ----------------------------------------------------------------- status

    async def get_state(self, service: str, env: str, target: DockerTarget) -> TargetState:
        """The service container: state, health, restarts, start time, image and revision."""
        host = self.host(target)
        state = TargetState(service=service, env=env, platform=self.name,
                            where=f"docker {host} · container {target.container}", desired=1)
        try:
            fam, now = await self._run(target, "read", lambda s: (s.family(), self._daemon_now(s)))
        except PlatformError as err:
            state.error = str(err)
            return state
        return fill_state(state, fam, now)

    # ----------------------------------------------------------------- deploy

    async def set_image(self, service: str, env: str, target: DockerTarget, image: str,
                        change_cause: str) -> int:
        """Replace the service container by one running ``image``; the new revision to watch."""
        current = await self._run(target, "read", lambda s: s.inspect())
        if current is None:
            fam = await self._run(target, "read", lambda s: s.family())
            kept = ", ".join(str(r.revision) for r in fam.retired())
            hint = f" (kept revisions: {kept}; `!rollback` starts one again)" if kept else ""
            raise NotFound(f"no container {target.container} on Docker at {self.host(target)}{hint}")
        if (current.get("State") or {}).get("Paused"):
            raise PlatformError(f"container {target.container} is paused; unpause it first")
        note = await self._ensure_image(target, image)
        return await self._replace(target, image, change_cause, note)

    async def _ensure_image(self, target: DockerTarget, image: str) -> str:
        """Pull ``image``; else use the host's copy. Says which, for the progress message."""
        try:
            await asyncio.wait_for(self._run(target, "pull", lambda s: s.pull(image), what=f"image {image}"),
                                   self.pull_timeout)
            return f"pulled {image}"
        except Unreachable:
            raise
        except (PlatformError, TimeoutError) as err:
            why = (f"no answer within {self.pull_timeout:g} s" if isinstance(err, TimeoutError)
                   else pull_problem(str(err)))
        found = await self._run(target, "read", lambda s: s.local_image(image), what=f"image {image}")
        if found is None:
            raise PlatformError(f"image {image} could not be pulled ({_clip(why, 200)}) and is not on "
                                f"Docker at {self.host(target)} either")
        return f"{image} is the host's own copy (not pulled: {_clip(why, 120)})"

    async def _replace(self, target: DockerTarget, image: str, change_cause: str, note: str | None) -> int:
        """Create the next revision from the running configuration and swap it in."""

        def replace(s: _Session) -> int:
            fam = s.family()
            current = fam.current
            if current is None:
                raise NotFound(f"no container {s.name} on Docker at {s.host}")
            cur_rev = fam.current_revision or 1
            new_rev = max(fam.revisions) + 1
            old_image = None
            try:
                old_image = s.api.inspect_image(current["Image"])
            except DockerNotFound:
                pass
            labels = {LABEL_REVISION: str(new_rev), LABEL_CAUSE: change_cause, LABEL_IMAGE: image,
                      LABEL_SERVICE: s.name, LABEL_HISTORY: fam.history_label()}
            policy = s.restart_policy_of(current)
            if policy:
                labels[LABEL_RESTART] = json.dumps(policy, separators=(",", ":"))
            body, extra_networks = clone_config(current, old_image, image, labels)
            staged = f"{s.name}--rev{new_rev}"
            try:
                created = s.api.create_container_from_config(body, name=staged)
            except APIError as err:
                raise PlatformError(f"Docker at {s.host} refused to create the new container from "
                                    f"{s.name}'s configuration: {_explanation(err)}") from err
            new_id = created["Id"]
            try:
                for net, endpoint in extra_networks.items():
                    s.api.connect_container_to_network(new_id, net, aliases=endpoint.get("Aliases"))
            except (APIError, requests.exceptions.RequestException):
                s.api.remove_container(new_id, force=True)
                raise
            return self._swap(s, fam, cur_rev, new_id, note)

        return await self._run(target, "deploy", replace)

    def _swap(self, s: _Session, fam: _Family, cur_rev: int, incoming: str, note: str | None,
              policy: dict[str, Any] | None = None) -> int:
        """Retire the running container, give ``incoming`` the service's name, start it; its revision.

        A fault before the start puts the old container back as it was. A failed start is left
        for ``progress`` to report (it is a revision, as on Kubernetes; the core rolls back).
        """
        current = fam.current
        retired = False
        try:
            if current is not None:
                retired = s.retire(current, cur_rev)
            s.api.rename(incoming, s.name)
            if policy:
                s.api.update_container(incoming, restart_policy=policy)
        except (DockerException, requests.exceptions.RequestException, OSError) as err:
            self._restore(s, current, retired, incoming)
            raise platform_error(err, s.host, s.what, "replace", s.timeout) from err
        generation = s.family().current_revision or 1
        watch = _Watch(note=note)
        with self._lock:
            self._watches[(s.host, s.name, generation)] = watch
            while len(self._watches) > 200:
                self._watches.pop(next(iter(self._watches)))
        watch.start_error = s.start(incoming)  # Docker resets RestartCount on a start
        return generation

    def _restore(self, s: _Session, old: dict[str, Any] | None, retired: bool, incoming: str) -> None:
        """Best effort: the incoming container out of the way, the old one back and started."""
        try:
            named = s.inspect(s.name)
            if named is not None and named["Id"] == incoming:
                s.api.rename(incoming, f"{s.name}--failed-{incoming[:8]}")
            if old is not None:
                if retired:
                    s.api.rename(old["Id"], s.name)
                policy = s.restart_policy_of(old)
                if policy:
                    s.api.update_container(old["Id"], restart_policy=policy)
                if (old.get("State") or {}).get("Running"):
                    s.api.start(old["Id"])
        except (DockerException, requests.exceptions.RequestException, OSError) as err:
            log.warning("could not restore %s on %s: %s", s.name, s.host, err)

    # ----------------------------------------------------------------- progress

    async def progress(self, service: str, env: str, target: DockerTarget, generation: int) -> RolloutProgress:
        """How the container of revision ``generation`` is doing (see the module docstring)."""
        host = self.host(target)
        watch = self._watches.get((host, target.container, generation)) or _Watch()

        def look(s: _Session) -> tuple[RolloutProgress, bool]:
            fam = s.family()
            p = rollout_progress(fam, generation, target, watch, self._daemon_now(s))
            if p.state == "failed":
                lines = [self.redactor.redact(x) for x in s.logs_tail(s.name)]
                if lines:
                    p.message = (f"{p.message}; last log lines: "
                                 + " | ".join(_squeeze(lines)[-LOG_LINES_ON_FAILURE:]))
            done = p.state == "complete"
            if done:
                self._tidy(s, fam, target)
            return p, done

        progress, done = await self._run(target, "watch", look)
        if done or progress.state == "failed":
            with self._lock:
                self._watches.pop((host, target.container, generation), None)
        return progress

    def _tidy(self, s: _Session, fam: _Family, target: DockerTarget) -> None:
        """After a healthy rollout: drop retired containers beyond the limit (all without keep_previous)."""
        retired = fam.retired()
        drop = retired if not target.keep_previous else retired[:-HISTORY_LIMIT]
        for rev in drop:
            assert rev.container is not None
            try:
                s.api.remove_container(rev.container["Id"], force=True)
            except (APIError, requests.exceptions.RequestException) as err:
                log.warning("could not remove %s--rev%d: %s", s.name, rev.revision, err)

    # ----------------------------------------------------------------- history and rollback

    async def history(self, service: str, env: str, target: DockerTarget) -> list[RevisionInfo]:
        """Revisions oldest first: retired containers, recorded ones, the running one."""
        fam = await self._run(target, "read", lambda s: s.family())
        if not fam.revisions:
            raise NotFound(f"no container {target.container} on Docker at {self.host(target)}")
        return [r.info(running=_running(fam.current)) for r in fam.ordered()]

    async def rollback(self, service: str, env: str, target: DockerTarget, revision: int | None,
                       change_cause: str) -> tuple[RevisionInfo, int]:
        """Start revision ``revision`` (default: the one before the running one) again.

        A retired container is started again under the service's name and becomes the newest
        revision; a recorded one whose container is gone is recreated from its image and the
        running configuration. The running container is retired either way.
        """
        fam = await self._run(target, "read", lambda s: s.family())
        chosen = choose_revision(fam, revision, target, self.host(target))
        info = chosen.info()
        if chosen.container is None:  # pruned: recreate it from its image
            if fam.current is None or not chosen.image:
                raise NotFound(f"revision {chosen.revision} of {target.container} was removed and cannot be "
                               "recreated without a running container to copy the configuration from")
            note = await self._ensure_image(target, chosen.image)
            return info, await self._replace(target, chosen.image, change_cause, note)

        def revive(s: _Session) -> int:
            now = s.family()
            again = now.revisions.get(chosen.revision)
            if again is None or again.container is None or again.current:
                raise PlatformError(f"revision {chosen.revision} of {s.name} changed meanwhile; try again")
            target_id = again.container["Id"]
            policy = s.restart_policy_of(now.current)
            if policy is None:
                full = s.inspect(target_id) or {}
                recorded = _labels(full).get(LABEL_RESTART)
                policy = json.loads(recorded) if recorded else None
            return self._swap(s, now, now.current_revision or 1, target_id, None, policy=policy)

        return info, await self._run(target, "roll back", revive)

    # ----------------------------------------------------------------- maintenance actions

    async def restart(self, service: str, env: str, target: DockerTarget, change_cause: str) -> int:
        """``docker restart`` of the service container (its stop timeout, then a start); the
        running revision is the generation: ``progress`` reports it healthy again as after a deploy."""
        host = self.host(target)

        def restart(s: _Session) -> int:
            fam = s.family()
            current = fam.current
            if current is None:
                raise NotFound(f"no container {s.name} on Docker at {s.host}")
            if (current.get("State") or {}).get("Paused"):
                raise PlatformError(f"container {s.name} is paused; unpause it first")
            grace = (current.get("Config") or {}).get("StopTimeout")
            s.api.restart(current["Id"], timeout=int(grace) if grace is not None else 10)
            generation = fam.current_revision or 1
            with self._lock:
                self._watches[(host, s.name, generation)] = _Watch(note="restarted")
            return generation

        return await self._run(target, "restart", restart)

    async def scale(self, service: str, env: str, target: DockerTarget, replicas: int) -> tuple[int, int]:
        raise Unsupported(f"`{service}` in `{env}` is one Docker container; scaling is for Kubernetes targets")

    async def run_job(self, service: str, env: str, target: DockerTarget, cronjob: str, *,
                      timeout: float, poll_interval: float = 1.0) -> JobRun:
        raise Unsupported(f"`{service}` in `{env}` runs on Docker, which has no CronJobs; run-job is for "
                          "Kubernetes targets")

    async def prune_images(self, service: str, env: str, target: DockerTarget, *, all_unused: bool = False,
                           older_than_hours: int | None = None) -> PruneResult:
        """``docker image prune`` on the target's host: dangling images, or with ``all_unused`` every
        image no container uses (kept revisions are containers, so their images stay); with
        ``older_than_hours`` only images created before then (``--filter until=…h``)."""
        host = self.host(target)
        filters: dict[str, Any] = {"dangling": not all_unused}
        if older_than_hours is not None:
            filters["until"] = f"{int(older_than_hours)}h"

        def prune(s: _Session) -> PruneResult:
            before = {i["Id"] for i in s.api.images(all=True)}
            answer = s.api.prune_images(filters=filters) or {}
            after = {i["Id"] for i in s.api.images(all=True)}
            return PruneResult(host=host, images_deleted=len(before - after),
                               space_reclaimed=int(answer.get("SpaceReclaimed") or 0))

        return await self._run(target, "prune", prune, what="unused images")

    # ----------------------------------------------------------------- logs

    async def log_sources(self, service: str, env: str, target: DockerTarget,
                          query: LogQuery) -> list[tuple[str, AsyncIterator[LogLine]]]:
        """The log of the service container (``--pod``/``--container``: a kept revision by name,
        ``--previous``: the newest kept one), with Docker's timestamps; one source."""
        host = self.host(target)

        def open_stream(s: _Session) -> tuple[str, Any]:
            fam = s.family()
            retired = fam.retired()
            names = [s.name] + [f"{s.name}--rev{r.revision}" for r in reversed(retired)]
            wanted = query.pod or query.container
            if wanted is not None and wanted not in names:
                raise NotFound(f"no container {wanted} for {service} in {env}; containers: {', '.join(names)}")
            if query.previous:
                if wanted is not None and wanted != s.name:
                    name = wanted
                elif not retired:
                    raise NotFound(f"{s.name} has no previous container (no earlier revision is kept)")
                else:
                    name = f"{s.name}--rev{retired[-1].revision}"
            else:
                name = wanted or s.name
            if name == s.name and fam.current is None:
                raise NotFound(f"no container {s.name} on Docker at {s.host}")
            options: dict[str, Any] = {"stream": True, "timestamps": True, "follow": False,
                                       "tail": query.tail if query.tail is not None else "all"}
            if query.since is not None:
                since = self._daemon_now(s) - query.since
                options["since"] = max(int(since.timestamp()), 1)
            try:
                return name, s.api.logs(name, **options)
            except APIError as err:
                raise PlatformError(f"Docker at {s.host} cannot give the logs of {name}: {_explanation(err)}") \
                    from err

        name, stream = await self._run(target, "read the logs of", open_stream)
        return [(name, self._lines(name, stream, host))]

    async def _lines(self, source: str, stream: Any, host: str) -> AsyncIterator[LogLine]:
        """Docker's log frames as timestamped lines, read in batches in a thread."""
        chunks = iter(stream)
        buffer = b""
        last: datetime | None = None
        try:
            while True:
                try:
                    batch = await asyncio.to_thread(lambda: list(itertools.islice(chunks, LOG_BATCH)))
                except (DockerException, requests.exceptions.RequestException, OSError) as err:
                    raise platform_error(err, host, f"the log of {source}", "read", self.request_timeout) \
                        from err
                if not batch:
                    break
                data = buffer + b"".join(c if isinstance(c, bytes) else str(c).encode() for c in batch)
                *complete, buffer = data.split(b"\n")
                for raw in complete:
                    line = parse_k8s_line(source, raw.decode("utf-8", "replace"), last)
                    last = line[0]
                    yield line
            if buffer:
                yield parse_k8s_line(source, buffer.decode("utf-8", "replace"), last)
        finally:
            await asyncio.to_thread(_close_quietly, stream)


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception as err:  # noqa: BLE001 -- closing a half-read HTTP stream must not hide the real error
        log.debug("closing a log stream: %s", err)


# --------------------------------------------------------------------------- pure mapping


def _running(container: dict[str, Any] | None) -> bool:
    return bool(container and (container.get("State") or {}).get("Running")
                and not (container.get("State") or {}).get("Restarting"))


def choose_revision(fam: _Family, revision: int | None, target: DockerTarget, host: str) -> _Rev:
    """The revision a rollback goes to (None or 0: the newest before the running one)."""
    others = [r for r in fam.ordered() if not r.current]
    valid = ", ".join(f"{r.revision} ({image_version(r.image)})" for r in others) or "none"
    if not fam.revisions:
        raise NotFound(f"no container {target.container} on Docker at {host}")
    if not revision:
        if not others:
            raise NotFound(f"{target.container} has no earlier revision to roll back to")
        return others[-1]
    chosen = fam.revisions.get(revision)
    if chosen is None:
        raise NotFound(f"{target.container} has no revision {revision}; valid: {valid}")
    if chosen.current:
        raise PlatformError(f"revision {revision} ({image_version(chosen.image)}) is what "
                            f"{target.container} runs now")
    return chosen


def _health(container: dict[str, Any]) -> tuple[str | None, str | None, int]:
    """(health status or None without a healthcheck, the last check's output, failing streak)."""
    health = (container.get("State") or {}).get("Health")
    if not health:
        return None, None, 0
    checks = health.get("Log") or []
    output = _clip(str(checks[-1].get("Output") or ""), 200) if checks else None
    return health.get("Status"), output or None, int(health.get("FailingStreak") or 0)


def _failure(container: dict[str, Any], start_error: str | None) -> tuple[str, str] | None:
    """(reason, message) when the container is not going to get healthy by waiting."""
    st = container.get("State") or {}
    status = st.get("Status")
    code = st.get("ExitCode")
    restarts = int(container.get("RestartCount") or 0)  # since the last start by the API
    oom = " (out of memory: OOM killed)" if st.get("OOMKilled") else ""
    if status == "created" and (st.get("Error") or start_error):
        return "StartError", f"could not start: {_clip(st.get('Error') or start_error or '', 300)}"
    if status in ("exited", "dead"):
        err = f": {_clip(st['Error'], 200)}" if st.get("Error") else ""
        return "Exited", f"exited with code {code}{oom}{err}"
    if st.get("Restarting") or status == "restarting":
        return "Restarting", f"keeps restarting: exited with code {code}{oom}, restarted {max(restarts, 1)} time(s)"
    if restarts > 0:
        # Running again after a restart: Docker has reset ExitCode to 0 by now, so it says nothing.
        last = f", last exit code {code}" if code else ""
        return "Restarting", f"restarted {restarts} time(s){last}{oom}"
    health, output, streak = _health(container)
    if health == "unhealthy":
        return "Unhealthy", f"health check failed {streak} time(s)" + (f": {output}" if output else "")
    return None


def rollout_progress(fam: _Family, generation: int, target: DockerTarget, watch: _Watch,
                     now: datetime) -> RolloutProgress:
    """One look at revision ``generation`` of the service container (no I/O)."""
    note = f"{watch.note} · " if watch.note else ""
    c = fam.current
    current = fam.current_revision
    p = RolloutProgress(desired=1, revision=generation, failing_pods=[])
    if c is None:
        p.state, p.reason, p.message = "failed", "Gone", f"container {fam.name} disappeared"
        return p
    if current != generation:
        p.state, p.reason = "failed", "Superseded"
        p.message = f"{fam.name} runs revision {current} now, not {generation} (changed meanwhile)"
        return p
    p.updated = 1
    st = c.get("State") or {}
    failure = _failure(c, watch.start_error)
    if failure is not None:
        p.state, (p.reason, p.message) = "failed", failure
        p.failing_pods = [fam.name]
        return p
    if st.get("Paused"):
        p.state, p.message = "paused", f"{fam.name} is paused"
        return p
    if not st.get("Running"):
        p.message = f"{note}container {st.get('Status', '?')}, waiting for it to run"
        return p
    health, output, streak = _health(c)
    started = parse_time(st.get("StartedAt")) or now
    up = (now - started).total_seconds()
    if health == "healthy" or (health is None and up >= target.health_wait_seconds):
        p.state, p.ready, p.available = "complete", 1, 1
        p.message = f"{note}healthy" if health else f"{note}running for {_age(up)}"
        return p
    if health is not None:
        last = f"; last check: {output}" if output and streak else ""
        p.message = f"{note}waiting for the image's health check ({health}){last}"
    else:
        p.message = f"{note}running for {_age(up)} of {target.health_wait_seconds:g} s before it counts as healthy"
    return p


def fill_state(state: TargetState, fam: _Family, now: datetime) -> TargetState:
    """Map the service container onto ``state`` (no I/O)."""
    c = fam.current
    if c is None:
        kept = ", ".join(str(r.revision) for r in fam.retired())
        state.error = (f"no container {fam.name}"
                       + (f" (kept revisions: {kept}; `!rollback` starts one again)" if kept else ""))
        return state
    st = c.get("State") or {}
    state.image = _image_ref(c)
    state.version = image_version(state.image)
    state.revision = fam.current_revision
    health, output, streak = _health(c)
    running = _running(c)
    ready = running and health in (None, "healthy")
    state.updated = 1
    state.ready = state.available = 1 if ready else 0
    started = parse_time(st.get("StartedAt"))
    failure = _failure(c, None) if not running or health == "unhealthy" or st.get("Restarting") else None
    if st.get("Paused"):
        state.rollout, state.rollout_message = "paused", "the container is paused"
    elif failure is not None:
        finished = parse_time(st.get("FinishedAt"))
        ago = f" {_age((now - finished).total_seconds())} ago" if finished and not running else ""
        state.rollout, state.rollout_message = "failed", failure[1] + ago
    elif health == "starting":
        state.rollout, state.rollout_message = "progressing", "waiting for the health check"
    elif running:
        state.rollout = "complete"
        up = f"up {_age((now - started).total_seconds())}" if started else "running"
        state.rollout_message = f"{up}, {health}" if health else up
    else:
        state.rollout, state.rollout_message = "unknown", st.get("Status")
    phase = {"running": "Running", "restarting": "Running", "paused": "Running", "created": "Pending",
             "exited": "Failed", "dead": "Failed", "removing": "Failed"}.get(str(st.get("Status")), "Unknown")
    reason = None
    if failure is not None:
        reason = failure[0]
    elif health == "starting":
        reason = "HealthStarting"
    state.pods = [PodState(name=fam.name, phase=phase, ready=ready, restarts=int(c.get("RestartCount") or 0),
                           reason=reason, version=state.version, started_at=started)]
    if health == "unhealthy" or (health and streak):
        last = (st.get("Health") or {}).get("Log") or [{}]
        state.warnings.append(EventSummary(
            type="Warning", reason="Unhealthy", object=f"container/{fam.name}",
            message=f"health check failed: {output or 'no output'}", count=max(streak, 1),
            last_seen=parse_time(last[-1].get("End"))))
    if st.get("OOMKilled"):
        state.warnings.append(EventSummary(type="Warning", reason="OOMKilled", object=f"container/{fam.name}",
                                           message="the container ran out of memory",
                                           last_seen=parse_time(st.get("FinishedAt"))))
    return state
