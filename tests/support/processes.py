"""The trainer processes on this machine, and those a given test server started."""

from __future__ import annotations

from pathlib import Path

from tests.support.server import Server


def trainer_pids() -> list[int]:
    """Every fine-tuning trainer process on the machine (found by its command line)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if b"modelport.finetuning.trainer" in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def trainers_of(server: Server) -> list[int]:
    """The trainer processes this server started (its descendants: other servers on the machine,
    other engineers' test runs included, have their own)."""
    mine = []
    for pid in trainer_pids():
        ancestor = parent_of(pid)
        while ancestor > 1 and ancestor != server.proc.pid:
            ancestor = parent_of(ancestor)
        if ancestor == server.proc.pid:
            mine.append(pid)
    return mine
