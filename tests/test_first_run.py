"""The README's first command on the layout of the development machines, without touching the
real home: root, the interpreter under a home directory that other users cannot enter
(pyenv's /root/.pyenv under a 0700 /root), and the default MODELPORT_HOME=~/.modelport.

The test makes HOME a fresh directory *inside* that closed ancestor of the interpreter, leaves
MODELPORT_HOME unset, starts `modelport serve` and calls the `chat` deployment created on first
start. Every other server test keeps its home in a temp directory, which is how this layout went
untested. The content filter is off (as in the other server tests): the layout is what is under
test here, not the classifier.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import KEEP_ENV, ROOT, free_port, loopback_get

pytestmark = [pytest.mark.chat_model, pytest.mark.slow]  # the default layout serves `chat` (SmolLM2)


def closed_ancestor(path: str) -> Path | None:
    """The outermost directory above `path` that other users cannot enter, if any."""
    found = None
    current = Path(os.path.realpath(path))
    for ancestor in reversed(current.parents):
        if str(ancestor) != "/" and not ancestor.stat().st_mode & stat.S_IXOTH:
            found = ancestor
            break
    return found


@pytest.fixture
def home_inside_closed_ancestor() -> Iterator[Path]:
    closed = closed_ancestor(sys.base_prefix)
    if closed is None:
        pytest.skip(f"the interpreter ({sys.base_prefix}) has no closed ancestor on this machine")
    if os.geteuid() != 0 or not os.access(closed, os.W_OK):
        pytest.skip(f"creating a temporary home inside {closed} needs root")
    home = Path(tempfile.mkdtemp(prefix="modelport-first-run-", dir=closed))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_first_start_serves_chat_with_the_default_home_inside_a_closed_directory(
        home_inside_closed_ancestor: Path) -> None:
    home = home_inside_closed_ancestor
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_") or k in KEEP_ENV}
    env.update({"HOME": str(home), "MODELPORT_PORT": str(port), "MODELPORT_CONTENT_FILTER_DEFAULT": "off",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    assert "MODELPORT_HOME" not in env
    out_path = home / "server.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "modelport", "serve"], env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        data = home / ".modelport"  # the default MODELPORT_HOME, under the temporary HOME
        deadline = time.monotonic() + 240
        state: dict = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, out_path.read_text(errors="replace")
            if (data / "admin.key").exists():
                admin = (data / "admin.key").read_text().strip()
                try:
                    r = loopback_get(f"{url}/api/v1/deployments/chat", headers={"Authorization": f"Bearer {admin}"},
                                  timeout=5)
                except httpx.HTTPError:
                    r = None
                if r is not None and r.status_code == 200:
                    state = r.json()
                    if state["state"] != "creating":
                        break
            time.sleep(0.3)
        assert state.get("state") == "succeeded", (state.get("state_reason"), out_path.read_text(errors="replace"))
        assert state["isolation"] == {"network": True, "files": True, "processes": True}
        key = (data / "chat.key").read_text().strip()
        r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                       json={"model": "chat", "max_tokens": 8,
                             "messages": [{"role": "user", "content": "Say hello."}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
