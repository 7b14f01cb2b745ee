"""The one launcher, as the fine-tuning runner uses it, and the machine-wide uid pool (SEC-H1, M6).

A trainer's sandbox comes from the same `SandboxLauncher` code as a worker's; here a probe
payload runs in a "trainers" sandbox exactly as the trainer does (`python -m MODULE` with
inherited fds) and reports what it can reach.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.config import build_settings
from modelport.finetuning.runner import JobRunner
from modelport.workers.sandbox import RUN_ROOT, Capabilities, Sandbox, SandboxLauncher, UidPool, uids_in_use
from tests.support.workers import LoopThread

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sandboxes under uids of their own: needs root")


async def probe_in(sandbox: Sandbox, **options: object) -> dict:
    read_fd, write_fd = os.pipe()
    try:
        process = await sandbox.spawn(["tests.workers.sandbox_probe", "--out-fd", str(write_fd),
                                       "--options", json.dumps(options)], pass_fds=(write_fd,))
    finally:
        os.close(write_fd)
    assert await process.wait() == 0
    with os.fdopen(read_fd, "rb") as fh:
        return json.loads(fh.read())


def test_the_runner_and_the_supervisor_share_one_launcher_and_the_machine_wide_uid_pool(
        loop: LoopThread, tmp_path: Path) -> None:
    settings = build_settings({"MODELPORT_HOME": str(tmp_path / "home")})
    trainers = JobRunner(None, settings).launcher
    workers = SandboxLauncher.from_settings(settings, "workers")
    assert type(trainers) is type(workers) and trainers.kind == "trainers"
    assert trainers.uids.lock_dir == workers.uids.lock_dir == RUN_ROOT / "uids"
    assert trainers.run_dir == workers.run_dir == settings.run_dir

    async def scenario() -> tuple[Sandbox, Sandbox, dict]:
        worker_box = await workers.create()
        trainer_box = await trainers.create(name="ftjob_probe")
        try:
            return worker_box, trainer_box, await probe_in(trainer_box, tcp=[["127.0.0.1", 22]],
                                                           list=["/run", str(tmp_path)], read=["/proc/1/cmdline"])
        finally:
            await trainer_box.close()
            await worker_box.close()

    worker_box, trainer_box, report = loop.run(scenario())
    assert worker_box.uid != trainer_box.uid and {worker_box.uid, trainer_box.uid} <= set(range(61000, 62000))
    assert trainer_box.isolation.as_dict() == {"network": True, "files": True, "processes": True}
    assert report["uid"] == trainer_box.uid and report["pids"] == [1]
    assert report["tcp 127.0.0.1:22"] == "blocked: ENETUNREACH"
    assert report["list /run"] == report[f"list {tmp_path}"] == "blocked: ENOENT"
    assert report["read /proc/1/cmdline"] == "ok"  # its own: there is no other process to read
    assert report["core_limit"] == [0, 0] and report["dumpable"] == 0
    trainers.tidy()
    workers.tidy()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_the_uid_pool_is_machine_wide_and_skips_uids_that_still_run_something(tmp_path: Path) -> None:
    lock_dir = tmp_path / "uids"
    base = 61900  # a corner of the range that the other tests here do not reach
    one, other = UidPool(base, 8, lock_dir), UidPool(base, 8, lock_dir)  # two servers on one host
    assert one.acquire() == base
    assert other.acquire() == base + 1
    # Another process (a third server) holds base+2.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_dir / f"{base + 2}.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    # Something still runs under base+3: a leftover of its previous holder.
    leftover = subprocess.Popen(["sleep", "60"], user=base + 3, group=base + 3, extra_groups=[])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert base + 3 in uids_in_use()
        assert one.acquire() == base + 4  # neither the locked uid nor the busy one
        # A sandbox's uid whose processes are still alive is not given back.
        survivor = subprocess.Popen(["sleep", "60"], user=base, group=base, extra_groups=[])
        try:
            assert one.release(base) is False and base in one.held()
            assert other.acquire() == base + 5
        finally:
            survivor.kill()
            survivor.wait()
        assert one.acquire() == base  # reused once nothing runs under it any more
    finally:
        leftover.kill()
        leftover.wait()
        holder.communicate("", timeout=10)
    assert other.acquire() == base + 2  # the third server's lock went with it
    assert one.acquire() == base + 3  # its leftover is gone
    assert all(pool.release(uid) for pool in (one, other) for uid in pool.held())


def test_a_sandbox_can_be_closed_twice_and_spawned_again_only_while_open(loop: LoopThread, tmp_path: Path) -> None:
    launcher = SandboxLauncher(tmp_path / "again", "trainers")

    async def scenario() -> tuple[dict, dict]:
        box = await launcher.create()
        first, second = await probe_in(box), await probe_in(box)  # e.g. a worker's restart
        await box.close()
        await box.close()
        with pytest.raises(Exception, match="this sandbox was closed"):
            await box.spawn(["tests.workers.sandbox_probe"])
        return first, second

    first, second = loop.run(scenario())
    assert first["uid"] == second["uid"]
    assert not any(Path(launcher.directory).iterdir())
    launcher.tidy()
    assert asyncio.iscoroutinefunction(launcher.create)


def test_a_fine_tuning_job_whose_sandbox_cannot_be_built_fails_with_the_reason(loop: LoopThread,
                                                                                 tmp_path: Path) -> None:
    """The runner's own path, on real services (SQLite, datastore, bundled catalog); the machine
    that cannot build sandboxes is faked by overriding the launcher's probe."""
    from modelport.bootstrap import build_services, prepare
    from modelport.finetuning.schemas import JobCreate

    settings = build_settings({"MODELPORT_HOME": str(tmp_path / "home"),
                               "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false"})
    svc = build_services(settings)
    admin = svc.identity.authenticate(prepare(svc).admin_key)
    rows = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    svc.datasets.upload(admin, "d", None, iter([rows]))
    created = svc.finetuning.create(admin, JobCreate(model="SmolLM2-135M-Instruct", dataset="d"))
    runner = JobRunner(svc.finetuning, settings)
    runner.launcher = SandboxLauncher(settings.run_dir, "trainers",
                                      capabilities=Capabilities(None, "faked: no namespaces here"))
    job = svc.finetuning.claim_next()
    assert job is not None and job.id == created.id
    loop.run(runner._run(job))
    row = svc.finetuning.get(admin, job.id)
    assert row.status == "failed" and row.isolation is None
    assert row.error is not None and "cannot sandbox model processes (faked: no namespaces here)" in row.error
    assert "MODELPORT_ALLOW_UNISOLATED_WORKERS" in row.error
    runner.launcher.tidy()
    svc.db.dispose()


def test_a_sweep_for_stale_entries_never_removes_a_sandbox_the_launcher_holds(loop: LoopThread, tmp_path: Path) -> None:
    """Entries under the kind's directory that a dead server left are removed on first use, and
    again after tidy(); a sandbox this launcher created (even one made while a sweep ran: two pools
    provisioning at once, a82bf51's CI) is never among them."""
    launcher = SandboxLauncher(tmp_path / "sweep", "workers")

    async def scenario() -> list[Sandbox]:
        held = await launcher.create()
        launcher.tidy()  # its directory is not empty: it stays, and the next create sweeps again
        (launcher.directory / "wrk_left_by_a_dead_server").mkdir(mode=0o700)
        (launcher.directory / "stale.sock").touch()
        boxes = [held, *await asyncio.gather(*(launcher.create() for _ in range(8)))]
        launcher.tidy()
        boxes += await asyncio.gather(*(launcher.create() for _ in range(8)))
        return boxes

    async def close_all(boxes: list[Sandbox]) -> None:
        await asyncio.gather(*(b.close() for b in boxes))

    boxes = loop.run(scenario())
    try:
        assert sorted(p.name for p in launcher.directory.iterdir()) == sorted(b.name for b in boxes)
        assert all(b.directory.is_dir() for b in boxes)
    finally:
        loop.run(close_all(boxes))
    assert not any(launcher.directory.iterdir())
    launcher.tidy()
    assert not launcher.directory.exists()
