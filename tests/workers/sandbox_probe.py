"""What code inside a sandbox can reach, as a JSON report. Used two ways:

- as a payload of its own, `python -m tests.workers.sandbox_probe --out-fd N --options JSON`
  (how the sandbox tests run code the way a trainer runs), writing the report to fd N;
- from `ProbeRuntime`, inside a real model worker, which answers a generate request with it.

Options (each optional): `tcp` [[host, port]], `read` [paths], `unix` [socket paths], `list`
[directories], `orphan` (start a detached `sleep` that outlives this process), `sleep` (seconds
to wait before answering). The report always holds the uid, gid, groups, the pids visible in
/proc, the core-dump limit, the dumpable flag, the hostname and the effective capabilities.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import resource
import socket
import subprocess
import time
from typing import Any

PR_GET_DUMPABLE = 3


def _outcome(action) -> str:
    try:
        action()
    except OSError as exc:
        return f"blocked: {errno.errorcode.get(exc.errno or 0, str(exc.errno))}"
    return "ok"


def _tcp(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=3):
        pass


def _read(path: str) -> None:
    with open(path, "rb") as fh:
        fh.read(1)


def _unix(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(path)


def _listing(path: str) -> list[str] | str:
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return f"blocked: {errno.errorcode.get(exc.errno or 0, str(exc.errno))}"


def report(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for host, port in options.get("tcp", []):
        out[f"tcp {host}:{port}"] = _outcome(lambda h=host, p=port: _tcp(h, p))
    for path in options.get("read", []):
        out[f"read {path}"] = _outcome(lambda p=path: _read(p))
    for path in options.get("unix", []):
        out[f"unix {path}"] = _outcome(lambda p=path: _unix(p))
    for path in options.get("list", []):
        out[f"list {path}"] = _listing(path)
    if options.get("orphan"):
        # A detached grandchild in its own session: nothing of ours waits for it or kills it.
        subprocess.Popen(["sleep", "600"], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out["uid"] = os.getuid()
    out["gid"] = os.getgid()
    out["groups"] = sorted(os.getgroups())
    out["pids"] = sorted(int(e) for e in os.listdir("/proc") if e.isdigit())
    out["core_limit"] = list(resource.getrlimit(resource.RLIMIT_CORE))
    out["dumpable"] = ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    out["hostname"] = socket.gethostname()
    with open("/proc/self/status") as fh:
        out["capabilities"] = next(line.split()[1] for line in fh if line.startswith("CapEff:"))
    time.sleep(float(options.get("sleep", 0)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-fd", type=int, required=True)
    parser.add_argument("--options", default="{}")
    args = parser.parse_args()
    data = json.dumps(report(json.loads(args.options))).encode()
    with os.fdopen(args.out_fd, "wb") as out:
        out.write(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
