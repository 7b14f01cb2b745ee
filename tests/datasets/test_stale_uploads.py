"""What a crash leaves of a dataset upload goes while the server runs (SEC-M10).

The server is killed (SIGKILL, as a crash or an OOM kill would) while a dataset streams in: the
datastore's temp file of that upload stays on disk. A server started again on the same home
removes it once it is older than MODELPORT_UPLOAD_TTL_SECONDS, at its next periodic sweep, not
at start only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from modelport.kms.files import is_temp_name
from tests.support.server import loopback_client, start_server
from tests.support.waiting import wait_until

ENV = {"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "MODELPORT_UPLOAD_TTL_SECONDS": "3",
       "MODELPORT_UPLOAD_SWEEP_SECONDS": "0.5"}


def temp_files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and is_temp_name(p.name)]


def upload_temp_files(home: Path) -> list[Path]:
    """The upload's own temp file, in the datastore's blobs (a kill can also catch a key file's
    temp copy in the datastore's keys: the keystore removes those when it opens)."""
    return temp_files(home / "datastore" / "blobs")


def test_a_crashed_dataset_upload_leaves_nothing_after_the_ttl(tmp_path: Path):
    home = tmp_path / "home"
    s = start_server(home, env_extra=ENV)
    row = (json.dumps({"messages": [{"role": "user", "content": "q" * 200},
                                    {"role": "assistant", "content": "a"}]}) + "\n").encode()
    stop = threading.Event()

    def endless() -> Iterator[bytes]:
        while not stop.is_set():
            yield row * 50
            time.sleep(0.05)

    def upload() -> None:
        try:
            with loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {s.admin_key}"}, timeout=60) as c:
                c.post("/api/v1/datasets", params={"name": "crash"}, content=endless(),
                       headers={"Content-Type": "application/jsonl"})
        except httpx.HTTPError:
            pass  # the server is killed under it

    t = threading.Thread(target=upload)
    t.start()
    try:
        left = wait_until(lambda: upload_temp_files(home), 60, 0.1, "the upload's temp file")
        s.proc.kill()
        s.proc.wait(30)
    finally:
        stop.set()
        t.join(60)
    assert all(p.exists() for p in left)  # the crash left it behind
    s = start_server(home, env_extra=ENV)
    try:
        wait_until(lambda: not any(p.exists() for p in left), 60, 0.2, "the sweep to remove the leftover")
        assert temp_files(home) == []
        assert '"event":"uploads.expired"' in s.logs()
    finally:
        s.stop()
