"""`opsbot console` end to end: a subprocess fed a script, its --json output parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_console(script: str, *args: str, tmp_path: Path, timeout: float = 120) -> tuple[list[dict], str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSBOT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--json", "--data-dir", str(tmp_path), *args],
        input=script, capture_output=True, text=True, timeout=timeout, env=env,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return events, proc.stderr, proc.returncode


def texts(event: dict) -> str:
    parts = [event["content"]]
    for e in event["embeds"]:
        parts += [e["title"] or "", e["description"] or "", e["footer"] or ""]
        parts += [f"{f['name']}: {f['value']}" for f in e["fields"]]
    return "\n".join(parts)


def test_status_as_member_prints_version_and_ready(tmp_path):
    events, err, code = run_console("!status chat-gui prod\n", "--as", "member", tmp_path=tmp_path)
    assert code == 0, err
    assert len(events) == 1, events
    (event,) = events
    assert event["event"] == "message" and event["channel"] == "ops" and event["author"] == "opsbot"
    fields = {f["name"]: f["value"] for f in event["embeds"][0]["fields"]}
    assert fields["Version"] == "`v1.4.0`"
    assert fields["Replicas"] == "3/3 ready"
    assert set(event) >= {"event", "channel", "id", "author", "content", "embeds", "buttons", "attachments"}


def test_guest_is_refused_and_control_lines_work(tmp_path):
    script = "\n".join([
        "!status chat-gui prod",        # guest: refused
        "/as member",
        "/channel deploys",
        "!status auth staging",         # member in #deploys: allowed
        "/slash help",                  # ephemeral slash answer, printed from the interaction
        "/frobnicate",                  # unknown control line: a note, not a crash
        "/click Confirm",               # nothing to click: a note, not a crash
        "/wait 0.1",
        "/quit",
        "!status never sent",
    ]) + "\n"
    events, err, code = run_console(script, "--as", "guest", tmp_path=tmp_path)
    assert code == 0, err
    assert "it needs the `status` grant" in events[0]["content"]
    assert events[0]["channel"] == "ops"
    assert events[1]["channel"] == "deploys" and "v1.5.0" in texts(events[1])
    assert events[2].get("ephemeral") is True and "!status" in texts(events[2])
    assert len(events) == 3, "nothing after /quit may run"
    assert "unknown control line /frobnicate" in err
    assert "no bot message with a button 'Confirm'" in err


def test_text_mode_and_eof(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSBOT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--as", "admin", "--data-dir", str(tmp_path)],
        input="!status strims dev\n", capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[#ops] opsbot" in proc.stdout
    assert "┃ strims · dev" in proc.stdout
    assert "Version: `v1.6.0-rc.1`" in proc.stdout
