"""The bot's `!deploy`, `!rollback` and `!logs` side by side with kubectl, on one sandbox cluster.

    python bench/deploy_vs_kubectl.py [--reps 5] [--quick] [--speed 1] [--poll SECONDS]
                                      [--log-lines 50000]

Figures, not a test: these machines are noisy. One run does it all, on one sandbox cluster (its own
process, so it shares neither the GIL nor the RSS with the bot) at one timing for both sides:

1. deploy: `!deploy chat staging vX` through the real bot on simcord, from the user's message to
   the bot's final "deployed" edit, against `kubectl set image deployment/modbot …` +
   `kubectl rollout status` on its twin (staging: 2 replicas, no confirmation). The sides take
   turns (bot first on even repetitions, kubectl first on odd ones), after one warm-up each.
2. rollback: `!rollback chat staging` against `kubectl rollout undo deployment/modbot` +
   `kubectl rollout status`, the same way.
3. logs: `!logs auth prod --since 24h` (every line of 3 pods × --log-lines lines) until the bot's
   answer, against `kubectl logs -l app=auth -n prod --prefix --tail=-1` written to a temporary
   file. Memory: the bot process's peak RSS during the command (Linux: /proc/self/clear_refs resets
   VmHWM before it, VmHWM after; shown with its rise over the RSS before), the process's lifetime
   ru_maxrss before and after the logs runs, and, in the untimed warm-up run, the tracemalloc peak
   (Python heap only). kubectl's peak RSS is its own ru_maxrss from os.wait4, taken in a small
   helper process (a child forked from the bot's big process would report that process's RSS).

A `kubectl get deploy -n staging --watch` observer timestamps the moment each rollout completes,
and the sandbox logs every API request with its time (CLOCK_MONOTONIC, shared by the processes), so
each side's time splits into: before the PATCH (planning, process start), the rollout itself
(PATCH → complete) and after it (complete → the final edit or kubectl's exit: the bot's polling
lag shows here).

Targets (issue 3): the bot adds under 5 % (or 300 ms) to a rollout; logs within 1.5× of kubectl.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox.controller import Timing
from sandbox.logs import BANNER, LOG_RATE_ANNOTATION

ENV = "staging"  # 2 replicas, no confirmation
BOT_SERVICE, KUBECTL_SERVICE = "chat", "modbot"  # twins: same spec, history and pods
LOG_SERVICE, LOG_ENV = "auth", "prod"  # 3 pods; auth logs carry secrets to redact
REPOSITORY = "registry.local/dgg/{service}"
TICK_INTERVAL = 0.25  # SandboxServer's default: the controllers move every 0.25 s of real time


def now() -> float:
    """CLOCK_MONOTONIC: the same clock in this process, the sandbox's and kubectl's parent.

    (simcord replaces time.monotonic while a bot runs, so it is not used here.)
    """
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ------------------------------------------------------------------------------ the sandbox process


def serve_sandbox(speed: float, kubeconfig: Path) -> None:
    """The child: SandboxServer at ``speed``, every request logged; ends when stdin closes."""
    from aiohttp import web

    from sandbox import server as srv

    requests: list[tuple[float, str, str, str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Any]) -> Any:
        if request.path == "/_bench/requests":
            since = int(request.query.get("since", "0"))
            return web.json_response({"next": len(requests), "requests": requests[since:]})
        agent = request.headers.get("User-Agent", "")
        who = "kubectl" if agent.startswith("kubectl") else "bot" if agent.startswith("OpenAPI") else agent
        query = "?watch" if request.query.get("watch") in ("1", "true") else ""
        requests.append((now(), request.method, request.path + query, who))
        return await handler(request)

    original = srv.KubernetesApi.app

    def app(self: Any) -> Any:
        application = original(self)
        application.middlewares.append(record)
        return application

    srv.KubernetesApi.app = app  # type: ignore[method-assign]
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    with srv.SandboxServer(timing=Timing(speed=speed), tick_interval=TICK_INTERVAL) as server:
        server.write_kubeconfig(kubeconfig)
        print(server.url, flush=True)
        with contextlib.suppress(Exception):
            sys.stdin.read()  # until the parent closes it (or dies)


class Sandbox:
    """The sandbox in its own process (started and stopped by the bench)."""

    def __init__(self, speed: float, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-sandbox", "--speed", str(speed),
             "--kubeconfig", str(kubeconfig)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise RuntimeError("the sandbox did not start")
        self._next = 0

    def requests(self) -> list[tuple[float, str, str, str]]:
        """The requests since the previous call: (time, method, path, who)."""
        with urllib.request.urlopen(f"{self.url}/_bench/requests?since={self._next}", timeout=10) as r:
            data = json.load(r)
        self._next = data["next"]
        return [tuple(x) for x in data["requests"]]  # type: ignore[misc]

    def cpu(self) -> float:
        """User + system CPU seconds of the sandbox process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------ kubectl


# kubectl is started by a small helper process, not forked from this one: a child's ru_maxrss
# starts at the high-water RSS of the process it was forked from (the kernel keeps the old mm's
# peak across exec), so kubectl forked from the bot's process would report the bot's RSS.
SPAWNER = r"""
import json, os, sys, time
def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)
stats = []
for cmd in json.loads(sys.argv[2]):
    started = now()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    stats.append([started, now(), code, usage.ru_maxrss, usage.ru_utime + usage.ru_stime])
    if code:
        break
with open(sys.argv[1], "w") as f:
    json.dump(stats, f)
"""


@dataclass
class Proc:
    started: float
    ended: float
    cpu: float  # user + system, summed over the commands
    maxrss_kb: int  # the largest of the commands

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path, cache_dir: Path) -> None:
        self.base = [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache_dir)]

    def run(self, *commands: list[str], stdout: Any = subprocess.DEVNULL) -> Proc:
        """kubectl commands one after another (as ``a && b`` would), each with its own rusage
        from os.wait4; timed from the first start to the last exit, not the helper's start."""
        with tempfile.NamedTemporaryFile("r") as stats, tempfile.TemporaryFile() as err:
            argv = json.dumps([[*self.base, *c] for c in commands])
            subprocess.run([sys.executable, "-I", "-S", "-c", SPAWNER, stats.name, argv],
                           stdin=subprocess.DEVNULL, stdout=stdout, stderr=err, check=False)
            ran = json.loads(stats.read() or "[]")
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
        if len(ran) != len(commands) or any(r[2] for r in ran):
            raise RuntimeError(f"kubectl {commands} failed: {text}")
        return Proc(ran[0][0], ran[-1][1], sum(r[4] for r in ran), max(r[3] for r in ran))

    async def arun(self, *commands: list[str], stdout: Any = subprocess.DEVNULL) -> Proc:
        return await asyncio.to_thread(self.run, *commands, stdout=stdout)


class Observer:
    """``kubectl get deploy -n ENV --watch``: when each Deployment's rollout completes."""

    FORMAT = ("{.metadata.name}|{.metadata.generation}|{.status.observedGeneration}|{.spec.replicas}|"
              "{.status.replicas}|{.status.updatedReplicas}|{.status.availableReplicas}{\"\\n\"}")

    def __init__(self, kubectl: Kubectl, namespace: str) -> None:
        self.records: list[tuple[float, str, int, int, int, int, int, int]] = []
        self.proc = subprocess.Popen([*kubectl.base, "get", "deploy", "-n", namespace, "--watch",
                                      "-o", f"jsonpath={self.FORMAT}"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True, name="bench-observer")
        self.thread.start()
        if not self.ready.wait(15):
            self.stop()
            raise RuntimeError("the watch observer did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.strip().split("|")
            if len(parts) != 7:
                continue
            name, *numbers = parts
            self.records.append((now(), name, *(int(n or 0) for n in numbers)))  # type: ignore[arg-type]
            self.ready.set()

    def generation(self, name: str) -> int:
        return max((r[2] for r in self.records if r[1] == name), default=0)

    def completed(self, name: str, after_generation: int) -> float | None:
        """When ``name`` was first seen complete at a generation above ``after_generation``."""
        for t, n, gen, observed, desired, replicas, updated, available in list(self.records):
            if (n == name and gen > after_generation and observed >= gen
                    and desired == replicas == updated == available):
                return t
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)


# ------------------------------------------------------------------------------ the bot on simcord


class BotEvents:
    """The bot's messages and edits as simcord emits them, timestamped."""

    def __init__(self, world: Any) -> None:
        self.world = world
        self.events: list[tuple[float, str, int, str]] = []  # (time, kind, message id, text)

    def __call__(self, event: str, payload: Any) -> None:
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE") or not isinstance(payload, dict):
            return
        if str((payload.get("author") or {}).get("id")) != str(self.world.bot.user.id):
            return
        texts = [payload.get("content") or ""]
        for e in payload.get("embeds") or []:
            texts += [e.get("title") or "", e.get("description") or ""]
        self.events.append((now(), "create" if event == "MESSAGE_CREATE" else "edit",
                            int(payload["id"]), "\n".join(texts)))

    def since(self, t: float) -> list[tuple[float, str, int, str]]:
        return [e for e in self.events if e[0] >= t]


def rss_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in kB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------ measurements


@dataclass
class Rollout:
    total: float  # message → final edit, or kubectl start → kubectl exit
    before_patch: float | None = None
    rollout: float | None = None  # PATCH → complete (seen by the observer)
    after: float | None = None  # complete → end
    poll_lag: float | None = None  # bot: complete → its read that saw it
    sandbox_cpu: float = 0.0  # the sandbox process's CPU meanwhile
    api_requests: int = 0
    discord_calls: int = 0
    edits: int = 0
    cpu: float = 0.0
    maxrss_kb: int = 0


@dataclass
class LogRun:
    seconds: float
    lines: int
    out_bytes: int
    cpu: float
    peak_rise_kb: int | None = None  # bot: VmHWM − VmRSS before
    peak_kb: int | None = None  # bot: VmHWM; kubectl: ru_maxrss
    summary: str = ""
    to_requests: float | None = None  # start → the last pods/log request reached the sandbox
    sandbox_cpu: float = 0.0  # the sandbox process's CPU meanwhile


@dataclass
class Bench:
    args: argparse.Namespace
    world: Any
    sandbox: Sandbox
    kubectl: Kubectl
    events: BotEvents
    observer: Observer | None = None
    version: int = 0
    results: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def next_version(self) -> str:
        self.version += 1
        return f"v2.0.{self.version}"

    def split(self, r: Rollout, who: str, service: str, started: float, generation: int, end: float) -> None:
        """Fill ``r``'s phases from the sandbox's request log and the observer."""
        requests = [q for q in self.sandbox.requests() if q[3] == who]
        r.api_requests = len(requests)
        deployment = f"/apis/apps/v1/namespaces/{ENV}/deployments/{service}"
        patches = [q[0] for q in requests if q[1] == "PATCH" and q[2] == deployment]
        done = self.observer.completed(service, generation) if self.observer else None
        if patches:
            r.before_patch = patches[0] - started
        if patches and done:
            r.rollout = done - patches[0]
        if done:
            r.after = end - done
            if who == "bot":
                # The bot stops reading once it sees the rollout complete: its last read saw it.
                # (The observer sees completion a few ms late, so this can be slightly negative.)
                reads = [q[0] for q in requests if q[1] == "GET" and q[2] == deployment and q[0] <= end]
                if reads:
                    r.poll_lag = reads[-1] - done

    async def bot_rollout(self, text: str, service: str, word: str) -> Rollout:
        world = self.world
        generation = self.observer.generation(service) if self.observer else 0
        self.sandbox.requests()
        calls = len(world.env.http_requests)
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = now()
        await world.members["mod"].send(world.channels["ops"], text)
        await world.app.supervisor.join(timeout=300)
        events = self.events.since(started)
        progress = next((e for e in events if e[1] == "create" and e[3].startswith("🚀")), None)
        if progress is None:
            raise RuntimeError(f"{text!r}: no progress message; the bot said {[e[3] for e in events]}")
        edits = [e for e in events if e[1] == "edit" and e[2] == progress[2]]
        if not edits or f"✅ {word}" not in edits[-1][3]:
            raise RuntimeError(f"{text!r} did not succeed: {edits[-1][3] if edits else progress[3]!r}")
        end = edits[-1][0]
        after = resource.getrusage(resource.RUSAGE_SELF)
        r = Rollout(total=end - started, discord_calls=len(world.env.http_requests) - calls, edits=len(edits),
                    cpu=(after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime))
        await asyncio.sleep(0.2)  # let the observer see the last status
        self.split(r, "bot", service, started, generation, end)
        return r

    async def kubectl_rollout(self, first: list[str], service: str) -> Rollout:
        generation = self.observer.generation(service) if self.observer else 0
        self.sandbox.requests()
        p = await self.kubectl.arun(first, ["rollout", "status", f"deployment/{service}", "-n", ENV, "--timeout=300s"])
        r = Rollout(total=p.seconds, cpu=p.cpu, maxrss_kb=p.maxrss_kb)
        await asyncio.sleep(0.2)
        self.split(r, "kubectl", service, p.started, generation, p.ended)
        return r

    async def deploy_pair(self, rep: int) -> tuple[Rollout, Rollout]:
        bot_version, kubectl_version = self.next_version(), self.next_version()
        image = f"{KUBECTL_SERVICE}={REPOSITORY.format(service=KUBECTL_SERVICE)}:{kubectl_version}"

        async def bot() -> Rollout:
            return await self.bot_rollout(f"!deploy {BOT_SERVICE} {ENV} {bot_version}", BOT_SERVICE, "deployed")

        async def kubectl() -> Rollout:
            return await self.kubectl_rollout(["set", "image", f"deployment/{KUBECTL_SERVICE}", image, "-n", ENV],
                                              KUBECTL_SERVICE)

        return await _in_turn(rep, bot, kubectl)

    async def rollback_pair(self, rep: int) -> tuple[Rollout, Rollout]:
        async def bot() -> Rollout:
            return await self.bot_rollout(f"!rollback {BOT_SERVICE} {ENV}", BOT_SERVICE, "rolled back")

        async def kubectl() -> Rollout:
            return await self.kubectl_rollout(["rollout", "undo", f"deployment/{KUBECTL_SERVICE}", "-n", ENV],
                                              KUBECTL_SERVICE)

        return await _in_turn(rep, bot, kubectl)

    # -------------------------------------------------------------------------- logs

    def give_pods_log_lines(self, lines: int) -> list[str]:
        """Annotate each pod of auth/prod so that it has written ``lines`` lines by now."""
        raw = subprocess.run([*self.kubectl.base, "get", "pods", "-n", LOG_ENV, "-l", f"app={LOG_SERVICE}",
                              "-o", "json"], capture_output=True, text=True, check=True, timeout=60).stdout
        names = []
        for pod in json.loads(raw)["items"]:
            started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
            age = time.time() - datetime.fromisoformat(started).timestamp()
            rate = (lines - BANNER) / age
            name = pod["metadata"]["name"]
            self.kubectl.run(["annotate", "pod", name, "-n", LOG_ENV, "--overwrite", f"{LOG_RATE_ANNOTATION}={rate:.6f}"])
            names.append(name)
        return names

    async def bot_logs(self, *, trace: bool = False) -> LogRun:
        world = self.world
        text = f"!logs {LOG_SERVICE} {LOG_ENV} --since 24h"
        self.sandbox.requests()
        resettable = reset_peak_rss()
        rss_before, _ = rss_kb()
        if trace:
            tracemalloc.start()
        cpu, sandbox_cpu = resource.getrusage(resource.RUSAGE_SELF), self.sandbox.cpu()
        started = now()
        await world.members["oncall"].send(world.channels["ops"], text)
        events = self.events.since(started)
        reply = next((e for e in events if e[1] == "create" and e[3].startswith("📜")), None)
        end = reply[0] if reply else now()
        after, sandbox_after = resource.getrusage(resource.RUSAGE_SELF), self.sandbox.cpu()
        peak_trace = tracemalloc.get_traced_memory()[1] if trace else 0
        if trace:
            tracemalloc.stop()
        _, hwm = rss_kb()
        if reply is None:
            raise RuntimeError(f"{text!r}: no answer; the bot said {[e[3] for e in events]}")
        message = next(m for m in world.channels["ops"].history() if m.id == reply[2])
        size = sum(a.size for a in message.attachments)
        match = re.search(r"([\d,]+) lines? from", reply[3])
        run = LogRun(seconds=end - started, lines=int(match.group(1).replace(",", "")) if match else -1,
                     out_bytes=size, cpu=(after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime),
                     peak_rise_kb=(hwm - rss_before) if resettable else None, peak_kb=hwm,
                     summary=reply[3].splitlines()[0], sandbox_cpu=sandbox_after - sandbox_cpu)
        if trace:
            run.peak_kb = peak_trace // 1024
            run.peak_rise_kb = None
        run.to_requests = self._log_requests_at("bot", started)
        return run

    def _log_requests_at(self, who: str, started: float) -> float | None:
        times = [q[0] for q in self.sandbox.requests() if q[3] == who and q[2].endswith("/log")]
        return max(times) - started if times else None

    async def kubectl_logs(self, out: Path) -> LogRun:
        self.sandbox.requests()
        sandbox_cpu = self.sandbox.cpu()
        with out.open("wb") as f:
            p = await self.kubectl.arun(["logs", "-l", f"app={LOG_SERVICE}", "-n", LOG_ENV, "--prefix", "--tail=-1"],
                                        stdout=f)
        sandbox_cpu = self.sandbox.cpu() - sandbox_cpu
        with out.open("rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        size = out.stat().st_size
        out.unlink()
        return LogRun(seconds=p.seconds, lines=lines, out_bytes=size, cpu=p.cpu, peak_kb=p.maxrss_kb,
                      to_requests=self._log_requests_at("kubectl", p.started), sandbox_cpu=sandbox_cpu)


async def _in_turn(rep: int, bot: Callable[[], Any], kubectl: Callable[[], Any]) -> tuple[Any, Any]:
    """Bot first on even repetitions, kubectl first on odd ones."""
    if rep % 2 == 0:
        b = await bot()
        k = await kubectl()
    else:
        k = await kubectl()
        b = await bot()
    return b, k


# ------------------------------------------------------------------------------ printing


def med(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def medf(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"[{min(values):.2f}–{max(values):.2f}]"


def secs(v: float | None) -> str:
    return "   —  " if v is None else f"{v:6.2f}"


def mb(kb: float | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.0f} MB"


def report_rollouts(title: str, pairs: list[tuple[Rollout, Rollout]], bot_label: str, kubectl_label: str,
                    poll: float) -> bool:
    bots, kubectls = [b for b, _ in pairs], [k for _, k in pairs]
    bt, kt = [b.total for b in bots], [k.total for k in kubectls]
    bm, km = statistics.median(bt), statistics.median(kt)
    paired = [b.total - k.total for b, k in pairs]
    print(f"\n{title}\n  {len(pairs)} repetitions; seconds, median [min–max]; phases: message or process start → "
          "PATCH, PATCH → rollout complete (watch observer), complete → final edit or kubectl exit")
    print(f"  {'':42} {'total':>6} {'spread':>13}   {'→PATCH':>6} {'rollout':>7} {'after':>6}")
    for label, rs, ts in ((bot_label, bots, bt), (kubectl_label, kubectls, kt)):
        print(f"  {label:42} {statistics.median(ts):6.2f} {spread(ts):>13}   {secs(med([r.before_patch for r in rs]))} "
              f"{secs(med([r.rollout for r in rs])):>7} {secs(med([r.after for r in rs]))}")
    overhead = bm - km
    print(f"  ratio bot/kubectl (medians) {bm / km:.3f}; the bot adds {overhead:+.2f} s ({overhead / km:+.1%}); "
          f"paired differences {statistics.median(paired):+.2f} s {spread(paired)}")
    lags = [b.poll_lag for b in bots if b.poll_lag is not None]
    if len(lags) == len(bots):
        rest = [d - lag for d, lag in zip(paired, lags, strict=True)]
        print(f"  of which polling lag (complete → the bot's read that saw it) {med(lags):+.2f} s "
              f"{spread(lags)} with rollout_poll_seconds={poll:g}; without it the bot adds {statistics.median(rest):+.2f} s "
              f"{spread(rest)}")
    print(f"  per run: bot {med([b.api_requests for b in bots]):.0f} API requests, "
          f"{med([b.discord_calls for b in bots]):.0f} Discord calls ({med([b.edits for b in bots]):.0f} edits), "
          f"{med([b.cpu for b in bots]):.2f} s CPU in its process; kubectl {med([k.api_requests for k in kubectls]):.0f} "
          f"API requests, {med([k.cpu for k in kubectls]):.2f} s CPU, peak RSS {mb(med([k.maxrss_kb for k in kubectls]))}")
    ok = overhead < 0.05 * km or overhead < 0.3
    print(f"  target (adds under 5 % or 300 ms): {'HOLDS' if ok else 'MISSED'} ({overhead:+.2f} s, {overhead / km:+.1%})")
    return ok


def report_logs(bots: list[LogRun], kubectls: list[LogRun], traced: LogRun | None,
                maxrss_before: int, maxrss_after: int, resettable: bool) -> bool:
    bt, kt = [b.seconds for b in bots], [k.seconds for k in kubectls]
    bm, km = statistics.median(bt), statistics.median(kt)
    print(f"\nlogs: every line of {LOG_SERVICE} in {LOG_ENV} (3 pods)\n  {len(bots)} repetitions; median [min–max]; "
          "→reqs: start → the last pods/log request reached the sandbox")
    print(f"  {'':42} {'seconds':>7} {'spread':>13} {'→reqs':>6} {'lines':>8} {'output':>8} {'CPU s':>6} "
          f"{'sandbox':>7} {'peak RSS':>15}")
    if resettable:
        b_peak = f"{mb(med([b.peak_kb for b in bots]))} (+{(med([b.peak_rise_kb for b in bots]) or 0) / 1024:.0f})"
    else:
        b_peak = mb(med([b.peak_kb for b in bots]))
    for label, runs, ts, peak in ((f"bot !logs {LOG_SERVICE} {LOG_ENV} --since 24h", bots, bt, b_peak),
                                  ("kubectl logs -l … --prefix --tail=-1", kubectls, kt,
                                   mb(med([k.peak_kb for k in kubectls])))):
        print(f"  {label:42} {statistics.median(ts):7.2f} {spread(ts):>13} {secs(med([r.to_requests for r in runs]))} "
              f"{med([r.lines for r in runs]):8,.0f} {medf([r.out_bytes for r in runs]) / 1e6:6.1f}MB "
              f"{med([r.cpu for r in runs]):6.2f} {med([r.sandbox_cpu for r in runs]):7.2f} {peak:>15}")
    print(f"  ratio bot/kubectl (medians) {bm / km:.2f}×; the bot answered: {bots[-1].summary}")
    print("  bot memory: " + ("peak RSS of the whole bot process (simcord included) during the command, in brackets its "
                              "rise over the RSS before it (VmHWM reset through /proc/self/clear_refs); "
                              if resettable else "VmHWM could not be reset: the process's peak so far; ")
          + f"process ru_maxrss {mb(maxrss_before)} before the logs runs, {mb(maxrss_after)} after"
          + (f"; tracemalloc peak (Python heap; the untimed warm-up run, {traced.seconds:.1f} s under tracing) "
             f"{traced.peak_kb / 1024:.1f} MB" if traced and traced.peak_kb is not None else ""))
    print("  kubectl memory: its own ru_maxrss (os.wait4 in a small helper process); CPU s: user + system of each side's "
          "own process; sandbox: the sandbox process's CPU seconds meanwhile (it makes the lines)")
    ok = bm <= 1.5 * km
    print(f"  target (within 1.5× of kubectl): {'HOLDS' if ok else 'MISSED'} ({bm / km:.2f}×)")
    return ok


# ------------------------------------------------------------------------------ main


async def bench(args: argparse.Namespace) -> int:
    from bot.world import open_world

    kubectl_binary = shutil.which("kubectl")
    if kubectl_binary is None:
        print("kubectl is not installed", file=sys.stderr)
        return 2
    started = time.perf_counter()
    timing = Timing(speed=args.speed)
    version = (await asyncio.to_thread(subprocess.run, [kubectl_binary, "version", "--client"], check=False,
                                       capture_output=True, text=True)).stdout
    print(f"opsbot bench: !deploy / !rollback / !logs vs kubectl — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {_cpu_model()}, "
          f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
          f"kubectl {version.splitlines()[0].split(': ')[-1] if version else '?'}")
    print(f"sandbox: own process, Timing({', '.join(f'{f.name}={getattr(timing, f.name):g}' for f in dataclasses.fields(timing))}),"
          f" controller tick {TICK_INTERVAL} s")
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as tmp_name:
        tmp = Path(tmp_name)
        sandbox = Sandbox(args.speed, tmp / "kubeconfig")
        observer: Observer | None = None
        try:
            kubectl = Kubectl(kubectl_binary, tmp / "kubeconfig", tmp / "kubectl-cache")
            overrides: dict[str, Any] = {}
            if args.poll is not None:
                overrides["rollout_poll_seconds"] = args.poll
            (tmp / "data").mkdir()
            async with open_world(kubeconfig=tmp / "kubeconfig", data_dir=tmp / "data", settle_timeout=120,
                                  **overrides) as world:
                poll = world.app.settings.rollout_poll_seconds
                print(f"bot: rollout_poll_seconds={poll:g}{' (the default)' if args.poll is None else ''}; "
                      f"repetitions: {args.reps} (+1 warm-up per side for rollouts)")
                events = BotEvents(world)
                world.env.backend.subscribers.append(events)
                b = Bench(args, world, sandbox, kubectl, events)
                observer = b.observer = Observer(kubectl, ENV)
                try:
                    ok = await run_all(b, args, tmp, poll)
                finally:
                    world.env.backend.subscribers.remove(events)
        finally:
            if observer is not None:
                observer.stop()
            sandbox.stop()
    print(f"\nverdict: {'both targets hold' if all(ok) else 'targets missed: ' + ', '.join(n for n, o in zip(('deploy', 'rollback', 'logs'), ok) if not o)}"
          f"  (run took {time.perf_counter() - started:.0f} s)")
    return 0


async def run_all(b: Bench, args: argparse.Namespace, tmp: Path, poll: float) -> list[bool]:
    await b.deploy_pair(0)  # warm-up: kubectl's discovery cache, the bot's connection pool
    deploys = [await b.deploy_pair(rep) for rep in range(args.reps)]
    ok_deploy = report_rollouts(f"deploy  ({ENV}, 2 replicas; bot → {BOT_SERVICE}, kubectl → {KUBECTL_SERVICE})",
                                deploys, f"bot !deploy {BOT_SERVICE} {ENV} vX → final edit",
                                "kubectl set image + rollout status", poll)
    rollbacks = [await b.rollback_pair(rep) for rep in range(args.reps)]
    ok_rollback = report_rollouts("rollback", rollbacks, f"bot !rollback {BOT_SERVICE} {ENV} → final edit",
                                  "kubectl rollout undo + rollout status", poll)

    b.give_pods_log_lines(args.log_lines)
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    resettable = reset_peak_rss()
    # Warm-up, untimed; the bot's is traced by tracemalloc (slow) unless --quick.
    warm = await b.bot_logs(trace=not args.quick)
    traced = None if args.quick else warm
    await b.kubectl_logs(tmp / "kubectl-logs.txt")
    bots: list[LogRun] = []
    kubectls: list[LogRun] = []
    for rep in range(args.reps):
        bot, kubectl = await _in_turn(rep, b.bot_logs, lambda: b.kubectl_logs(tmp / "kubectl-logs.txt"))
        bots.append(bot)
        kubectls.append(kubectl)
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok_logs = report_logs(bots, kubectls, traced, maxrss_before, maxrss_after, resettable)
    return [ok_deploy, ok_rollback, ok_logs]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="measured repetitions of each comparison (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 repetitions, no tracemalloc run")
    parser.add_argument("--speed", type=float, default=None,
                        help="sandbox speed (simulated seconds per real second; default $OPSBOT_SANDBOX_SPEED or 1: "
                             "a 2-replica rollout takes ~5 s)")
    parser.add_argument("--poll", type=float, default=None,
                        help="the bot's rollout_poll_seconds (default: the bot's default, 1 s)")
    parser.add_argument("--log-lines", type=int, default=50_000, help="log lines per pod (3 pods)")
    parser.add_argument("--serve-sandbox", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed is None:
        args.speed = Timing.from_env().speed
    if args.serve_sandbox:
        serve_sandbox(args.speed, args.kubeconfig)
        return 0
    if args.quick:
        args.reps = min(args.reps, 2)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
