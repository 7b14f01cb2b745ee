"""The README's CLI walkthrough runs, as a new user would type it, against a live server.

docs/walkthrough.sh is the walkthrough; README.md shows the same lines (checked here, line for
line). The script runs in bash with the installed `modelport` command on PATH and no admin.key
to fall back on: only the URL and the admin key it is given.

Faked, and why: the server serves SmolLM2 on the `echo` runtime (a real worker process that does
not load weights), so that this test checks the commands and not the model, whose answers
tests/inference checks; and its fine-tuning queue is stopped (MODELPORT_FINETUNE_CONCURRENCY=0),
so the job the walkthrough creates stays queued until it cancels it (training is tested in
tests/finetuning).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inference import CHAT_MODEL
from tests.support.server import ROOT, Server, start_server
from tests.support.tenants import ok

SCRIPT = ROOT / "docs" / "walkthrough.sh"
README = ROOT / "README.md"
BEGIN, END = "# --- walkthrough: begin ---", "# --- walkthrough: end ---"


def script_block() -> list[str]:
    lines = SCRIPT.read_text(encoding="utf-8").splitlines()
    return lines[lines.index(BEGIN) + 1:lines.index(END)]


def readme_block() -> list[str]:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- walkthrough: begin -->\n```bash\n(.*?)```\n<!-- walkthrough: end -->", text, re.S)
    assert found, "README.md has no walkthrough block between <!-- walkthrough: begin/end --> markers"
    return found.group(1).splitlines()


def test_the_readme_shows_the_walkthrough_script_line_for_line() -> None:
    assert readme_block() == script_block(), (
        "README.md's walkthrough differs from docs/walkthrough.sh; paste the lines between the script's markers "
        "into the README block:\n" + "\n".join(script_block()))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("walk") / "home",
                     env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
                                "MODELPORT_CONTENT_FILTER_DEFAULT": "on",  # the product default, as a new user has it
                                "MODELPORT_FINETUNE_CONCURRENCY": "0",
                                "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: "echo"})})
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.slow  # about 35 processes of the installed command: 44 s of CPU, the most of any test here
def test_the_walkthrough_runs_against_a_live_server(server: Server, tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "not-the-server-home"
    work.mkdir()
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "200",
                "MODELPORT_HOME": str(elsewhere)})
    r = subprocess.run(["bash", str(SCRIPT), server.url, server.admin_key, str(work)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"the walkthrough failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    assert "Traceback" not in r.stdout + r.stderr
    assert '"object":"chat.completion"' in r.stdout.replace(" ", "")  # the curl call answered
    assert "denied by: no-public-network" in r.stdout and "denied, as expected" in r.stdout
    assert re.search(r"deployment\s*│\s*assistant\s*│.*no-public-network", r.stdout)  # the compliance table

    # What the walkthrough says it did, seen by the admin, who joins `research` to look (audited)
    with server.client() as admin:
        users = {u["name"]: u for u in ok(admin.get("/api/v1/users")).json()}
        assert {"alice", "bob"} <= set(users) and users["alice"]["email"] == "alice@example.org"
        audit = ok(admin.get("/api/v1/audit", params={"all_workspaces": True, "limit": 1000})).json()
        # The admin minted alice's and bob's keys without joining `research` (SEC-C1): audited as its own act
        minted = [a for a in audit if a["action"] == "apikey.create" and a["actor_user_id"] == users["admin"]["id"]]
        assert {a["detail"]["user"] for a in minted} >= {users["alice"]["id"], users["bob"]["id"]}, minted
        assert "workspace.member.self_add" not in [a["action"] for a in audit]
        governance = [a["action"] for a in audit if a["resource_type"] == "policy"]
        assert governance == ["policy.delete", "policy.put"]  # newest first
        assert ok(admin.get("/api/v1/platform-key")).json()["latest_version"] >= 2
        in_research = {"X-Modelport-Workspace": "research"}
        assert admin.get("/api/v1/members", headers=in_research).status_code == 404  # never a member
        ok(admin.post("/api/v1/workspaces/research/members", json={"user": "admin", "role": "owner"}))
        members = {m["user"]: m["role"] for m in ok(admin.get("/api/v1/members", headers=in_research)).json()}
        assert members == {"alice": "owner", "bob": "contributor", "admin": "owner"}
        mine = ok(admin.get("/api/v1/models/my-model", headers=in_research)).json()
        assert (mine["owner"], mine["license"]["spdx"]) == ("workspace", "Apache-2.0")
        assert ok(admin.get("/api/v1/deployments", headers=in_research)).json() == []
        assert ok(admin.get("/api/v1/datasets", headers=in_research)).json() == []
        (job,) = ok(admin.get("/api/v1/finetuning/jobs", headers=in_research)).json()
        assert job["status"] == "cancelled"
        keys = ok(admin.get("/api/v1/apikeys", headers=in_research)).json()
        assert {k["name"] for k in keys} >= {"laptop", "bob-laptop"}
    assert (work / "smollm2.gguf").is_file() and (work / "faq.jsonl").is_file()
