"""The scan's chat-template check, run in a child process under CPU, memory and time limits.

A chat template is untrusted code. The renderer bounds what it can (a step budget and a
deadline per render, sizes per value), but memory is bounded per value, not per render, and a
long straight-line template is not stepped. So the scan renders the templates of one model in
a child process that it can afford to lose:

- the child sets its own limits before it reads a template: `RLIMIT_CPU` (the kernel stops it
  with SIGXCPU), `RLIMIT_AS` (an allocation beyond it fails with MemoryError) on top of what the
  interpreter already uses, and no core dump;
- the parent waits at most `wall_seconds`, then kills the child's process group;
- the child starts in Python's isolated mode, with an empty environment (no keys or settings
  reach it) and no inherited descriptors beyond its pipes;
- it answers one JSON line per template, flushed as soon as it is done, so that when it dies
  the parent knows which template killed it.

Whatever the child does, the verdict is a finding in the scan report (`chat_template.limits`,
a security finding: the model is registered as failed, like any other security finding), never
a hung request thread. Nothing of a template's text is ever written to the parent's logs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import modelport
from modelport.catalog.scanning.chat_template import check_chat_template, limit_finding
from modelport.catalog.scanning.report import Finding


@dataclass(frozen=True)
class TemplateLimits:
    """What one child process may spend on checking the templates of one model."""

    cpu_seconds: int = 10
    memory_bytes: int = 512 * 1024 * 1024
    wall_seconds: float = 20.0


DEFAULT_LIMITS = TemplateLimits()


@dataclass(frozen=True)
class TemplateToCheck:
    file: str
    key: str
    template: str
    bos_token: str = ""
    eos_token: str = ""


def check_templates(items: Sequence[TemplateToCheck], limits: TemplateLimits = DEFAULT_LIMITS) -> list[Finding]:
    """Check each template in one child process under `limits`; the findings of all of them."""
    if not items:
        return []
    payload = json.dumps([dataclasses.asdict(item) for item in items]).encode()
    root = str(Path(modelport.__file__).resolve().parent.parent)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from modelport.catalog.scanning.limits import child_main; child_main()")
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", code, root, str(limits.cpu_seconds), str(limits.memory_bytes)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={"LANG": "C.UTF-8"}, close_fds=True, start_new_session=True,
    )
    timed_out = False
    try:
        out, _ = proc.communicate(payload, timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        out, _ = proc.communicate()
    findings: list[Finding] = []
    answered = 0
    for line in out.splitlines():
        try:
            answer = json.loads(line)
        except ValueError:
            break  # cut off mid-line by the limit that stopped it
        item = items[answered]
        if "limit" in answer:
            findings.append(limit_finding(item.file, item.key, _describe(answer["limit"], limits)))
            return findings
        findings += [Finding.from_dict(f) for f in answer["findings"]]
        answered += 1
    if answered < len(items):
        item = items[answered]
        findings.append(limit_finding(item.file, item.key, _why_stopped(proc.returncode, timed_out, limits)))
    return findings


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _describe(limit: str, limits: TemplateLimits) -> str:
    if limit == "memory":
        return f"memory limit of {limits.memory_bytes // (1024 * 1024)} MiB"
    if limit == "cpu":
        return f"CPU limit of {limits.cpu_seconds} s"
    return f"time limit of {limits.wall_seconds:g} s"


def _why_stopped(returncode: int | None, timed_out: bool, limits: TemplateLimits) -> str:
    if timed_out:
        return _describe("time", limits)
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return _describe("cpu", limits)
    if returncode is not None and returncode < 0:
        return f"the checking process died of signal {-returncode}"
    return "the checking process stopped before it answered"


# -- the child ---------------------------------------------------------------------------


def child_main() -> None:
    """Entry point of the child: limits first, then one JSON line per template on stdout."""
    cpu_seconds, memory_bytes = int(sys.argv[2]), int(sys.argv[3])
    items = json.loads(sys.stdin.buffer.read())
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + memory_bytes,) * 2)
    out = sys.stdout
    for item in items:
        answer: dict = {"limit": "memory"}
        try:
            findings = check_chat_template(item["template"], item["file"], item["key"],
                                           bos_token=item["bos_token"], eos_token=item["eos_token"])
            answer = {"findings": [f.to_dict() for f in findings]}
        except MemoryError:
            pass  # answered below, once the render's values are freed
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if "limit" in answer:
            return


def _address_space() -> int:
    """Bytes of address space this process uses now (what the interpreter and jinja took)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
