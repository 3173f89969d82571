"""The CLI contract of design §4, run as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import require_program

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPSBOT_")}


def _start_sandbox(kubeconfig: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "bot", "sandbox", "--port", "0", "--kubeconfig", str(kubeconfig)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
    deadline = time.monotonic() + 30
    while not kubeconfig.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "opsbot sandbox did not write its kubeconfig"
        time.sleep(0.1)
    return proc


def test_kubectl_and_the_bot_share_one_sandbox(tmp_path):
    kubectl = require_program("kubectl")
    kubeconfig = tmp_path / "k.yaml"
    proc = _start_sandbox(kubeconfig)
    try:
        out = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "get", "deploy", "-n", "prod"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rows = [line.split() for line in out.stdout.splitlines()[1:]]
        assert sorted(r[0] for r in rows) == ["auth", "chat", "chat-gui", "modbot", "strims"]
        assert all(r[1] == "3/3" for r in rows)

        console = subprocess.run(
            [sys.executable, "-m", "bot", "console", "--json", "--as", "member", "--kubeconfig", str(kubeconfig),
             "--data-dir", str(tmp_path / "data")],
            input="!status modbot staging\n", capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT)
        assert console.returncode == 0, console.stderr
        (event,) = [json.loads(line) for line in console.stdout.splitlines()]
        fields = {f["name"]: f["value"] for f in event["embeds"][0]["fields"]}
        assert fields["Version"] == "`v1.5.0`" and fields["Replicas"] == "2/2 ready"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output


def test_check_config_exit_codes(tmp_path):
    good = subprocess.run([sys.executable, "-m", "bot", "check-config", "--config",
                           str(ROOT / "config/examples/opsbot.example.yaml")],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "permissions" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  chat:\n    repository: r/chat\n    envs:\n      prod: {namespace: prod}\n")
    broken = subprocess.run([sys.executable, "-m", "bot", "check-config", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert broken.returncode == 1
    assert "services.chat.envs.prod.deployment" in broken.stdout
    missing = subprocess.run([sys.executable, "-m", "bot", "check-config", "--config", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert missing.returncode == 2


def test_run_without_token_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bot", "run", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert proc.returncode == 2
    assert "no Discord token" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_secret_on_the_command_line_is_refused(tmp_path):
    for argv in (["--webhook-token", "hunter2-DoNotPrintMe"], ["--webhook-token=hunter2-DoNotPrintMe"]):
        proc = subprocess.run([sys.executable, "-m", "bot", "run", "--data-dir", str(tmp_path), *argv],
                              capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
        assert proc.returncode == 2
        assert "--webhook-token is not accepted" in proc.stderr
        assert "OPSBOT_WEBHOOK_TOKEN_FILE=PATH" in proc.stderr
        assert "DoNotPrintMe" not in proc.stdout + proc.stderr
    helped = subprocess.run([sys.executable, "-m", "bot", "run", "--help"], capture_output=True, text=True,
                            timeout=60, env=_env(), cwd=ROOT)
    assert "--webhook-token" not in helped.stdout and "--token-file" in helped.stdout


def test_run_refuses_an_open_webhook_off_loopback(tmp_path):
    config = tmp_path / "opsbot.yaml"
    config.write_text("alerts: {allow_unauthenticated: true}\n")
    env = {**_env(), "OPSBOT_DISCORD_TOKEN": "not-used"}
    proc = subprocess.run([sys.executable, "-m", "bot", "run", "--config", str(config), "--data-dir", str(tmp_path),
                           "--webhook-listen", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: alerts (line 1): allow_unauthenticated is refused with webhook_listen 0.0.0.0:0" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_run_with_a_missing_secret_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    env = {**_env(), "OPSBOT_DISCORD_TOKEN_FILE": str(missing)}
    proc = subprocess.run([sys.executable, "-m", "bot", "run", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"error: discord_token (from OPSBOT_DISCORD_TOKEN_FILE): {missing} does not exist" in proc.stderr
    flag = subprocess.run([sys.executable, "-m", "bot", "run", "--data-dir", str(tmp_path), "--token-file", str(missing)],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert flag.returncode == 2, flag.stdout + flag.stderr
    assert f"opsbot: --token-file: {missing} does not exist" in flag.stderr
    for out in (proc, flag):
        assert "Traceback" not in out.stdout + out.stderr
    demo = subprocess.run([sys.executable, "-m", "bot", "console", "--data-dir", str(tmp_path)], input="",
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert f"OPSBOT_DISCORD_TOKEN_FILE: {missing} does not exist" in demo.stderr
    assert "Traceback" not in demo.stdout + demo.stderr


def test_demo_serves_the_page_and_stops_cleanly(tmp_path):
    import re
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "bot", "demo", "--data-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "opsbot demo exited early"
            m = re.search(r"open (http://127\.0\.0\.1:\d+/#\S+)", line)
            url = m.group(1) if m else None
        assert url, "opsbot demo printed no URL"
        with urllib.request.urlopen(url.split("#")[0], timeout=10) as page:
            assert page.status == 200
            assert "<html" in page.read().decode("utf-8", "replace").lower()
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "opsbot demo stopped" in output
