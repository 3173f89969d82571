"""A real ``dockerd`` for the Docker tests, and tiny images made with ``docker import``.

One daemon per test session (starting one takes a second or two), as root, with its own data,
exec root and socket under /tmp, no bridge and no iptables: containers run with ``--network none``
(or ``host``). No registry is needed: images are imported from a tarball holding a static busybox,
``demo/<service>:<version>`` whose command prints a log line every half second, and "broken" ones
whose process exits at once. Skipped where dockerd, root or a static busybox is missing, except
under CI=true, where that fails (see ``require_program``).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_program

START_TIMEOUT = 60.0


def good_script() -> str:
    # PID 1 ignores SIGTERM without a handler: trap it, or every stop waits 10 s for SIGKILL.
    return ('trap "exit 0" TERM; echo "$SERVICE $VERSION starting"; i=0; '
            'while true; do i=$((i+1)); echo "$SERVICE $VERSION handled request $i token=s3cr3t-$i"; '
            'sleep 0.5; done')


def broken_script() -> str:
    return 'echo "$SERVICE $VERSION starting"; echo "$SERVICE $VERSION: fatal: cannot read /etc/app.conf" >&2; exit 3'


def _is_static(path: str) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP) runs in an empty image."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        endian = "<" if head[5] == 1 else ">"
        phoff, = struct.unpack_from(endian + "Q", head, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from(endian + "I", table, i * phentsize)[0] != 3 for i in range(phnum))


def _rootfs(busybox: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
    return buf.getvalue()


@dataclass
class DockerHost:
    """The test daemon: its URL, a low-level client, image and container helpers."""

    url: str
    api: Any
    rootfs: bytes
    log: Path
    _images: set[str] = field(default_factory=set)

    def image(self, service: str, version: str, script: str | None = None, *, cmd: list[str] | None = None,
              healthcheck: list[str] | None = None, interval: str = "1s") -> str:
        """``demo/<service>:<version>`` (made once): ENV SERVICE/VERSION, CMD busybox sh -c script
        (a good loop, or for a version with "broken" in it an exit at once), or ``cmd``."""
        ref = f"demo/{service}:{version}"
        if ref in self._images:
            return ref
        script = script or (broken_script() if "broken" in version else good_script())
        changes = [
            f"ENV SERVICE={service}", f"ENV VERSION={version}", "ENV PATH=/bin",
            "CMD " + _json(cmd or ["/bin/busybox", "sh", "-c", script]),
            f"LABEL org.opencontainers.image.version={version}",
        ]
        if healthcheck:
            changes.append(f"HEALTHCHECK --interval={interval} --timeout=2s --retries=2 CMD "
                           + _json(healthcheck))
        self.api.import_image_from_data(self.rootfs, repository=f"demo/{service}", tag=version,
                                        changes=changes)
        self._images.add(ref)
        return ref

    def run(self, name: str, image: str, *, command: list[str] | None = None, env: dict[str, str] | None = None,
            labels: dict[str, str] | None = None, network: str = "none", restart: str | None = None,
            binds: list[str] | None = None, healthcheck: dict[str, Any] | None = None) -> str:
        """Create and start a container as a person would with ``docker run -d``."""
        host_config = self.api.create_host_config(
            network_mode=network, binds=binds,
            restart_policy={"Name": restart, "MaximumRetryCount": 0} if restart else None)
        created = self.api.create_container(image, name=name, command=command, environment=env, labels=labels,
                                            host_config=host_config, healthcheck=healthcheck)
        self.api.start(created["Id"])
        return str(created["Id"])

    def containers(self, name: str) -> dict[str, dict[str, Any]]:
        """Every container named ``name`` or ``name--…``, by name, inspected."""
        out = {}
        for c in self.api.containers(all=True, filters={"name": f"^/{name}"}):
            cname = c["Names"][0].lstrip("/")
            if cname == name or cname.startswith(name + "--"):
                out[cname] = self.api.inspect_container(c["Id"])
        return out

    def remove(self, name: str) -> None:
        for c in self.containers(name).values():
            self.api.remove_container(c["Id"], force=True, v=True)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[DockerHost]:
    """A private dockerd for the session (as root), stopped at the end."""
    exe = require_program("dockerd")
    busybox = require_program("busybox")
    why = None
    if os.geteuid() != 0:
        why = "dockerd needs root"
    elif not _is_static(busybox):
        why = f"{busybox} is not statically linked (install busybox-static)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    import docker

    base = Path(tempfile.mkdtemp(prefix="opsbot-dockerd-", dir="/tmp"))
    sock = base / "docker.sock"
    log = base / "dockerd.log"
    args = [exe, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
            "--userland-proxy=false", "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
            "-H", f"unix://{sock}", "--pidfile", str(base / "docker.pid")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dockerd exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if sock.exists():
                try:
                    api = docker.APIClient(base_url=f"unix://{sock}", version="auto", timeout=30)
                    api.ping()
                    break
                except Exception:  # noqa: BLE001 -- not ready yet
                    api = None
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd did not answer within {START_TIMEOUT:g} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield DockerHost(url=f"unix://{sock}", api=api, rootfs=_rootfs(busybox), log=log)
    finally:
        if api is not None:
            api.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _unmount_under(base: Path) -> None:
    """dockerd leaves its default network namespace bind-mounted in the exec root: unmount what
    is mounted under ``base`` (deepest first), or the directory cannot be removed."""
    prefix = str(base) + "/"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[1].replace("\\040", " ") for line in mounts if len(line.split()) > 1]
    for point in sorted((m for m in points if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


@pytest.fixture
def container_name(dockerd: DockerHost) -> Iterator[str]:
    """A fresh container name for one test; it and its revisions are removed afterwards."""
    name = f"svc{uuid.uuid4().hex[:8]}-dev"
    yield name
    dockerd.remove(name)
