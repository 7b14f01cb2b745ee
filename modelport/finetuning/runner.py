"""The in-server queue runner: claims queued jobs, runs the trainer process, relays progress.

The queue is the `finetune_jobs` table polled by an asyncio task in the server (no extra
service on the embedded default). At most `finetune_concurrency` jobs run at once (default 1),
each trainer with `finetune_threads` torch threads (default: half the CPUs, at least 1) so that
training does not starve the inference workers.

Durability: a job is `running` only while this process runs its trainer. On start, the runner
puts jobs left `running` by a server that stopped back in the queue (they restart from the
beginning: no checkpoint is ever written, since it would hold training-derived weights on
disk); after `MAX_ATTEMPTS` starts a job fails with a reason instead of looping.

The trainer runs in a sandbox from the same launcher as the model workers
(modelport.workers.sandbox): its own network, mount and PID namespaces, a root that holds
nothing of the platform, a uid from the machine-wide pool (as root). A job whose sandbox cannot
be built fails with the reason; the job shows the isolation it ran with. The trainer gets the
base model as an open descriptor and the training data as plaintext frames over a pipe, which
the server decrypts with `Datastore.open`; it sends the adapter back over another pipe, and the
server encrypts it into the datastore. Its stdout and stderr are discarded (P1).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelport.errors import ServiceUnavailable
from modelport.finetuning.cancel import JobCancelled
from modelport.offload import run_blocking
from modelport.workers.sandbox import Sandbox, SandboxLauncher, SandboxUnavailable

log = logging.getLogger("modelport.finetuning")

FRAME = 1 << 20
MAX_ATTEMPTS = 3


class TrainerFailed(Exception):
    """The trainer ended without an adapter; `message` is safe to show (no data in it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class TrainerResult:
    adapter: bytes
    summary: dict[str, Any] = field(default_factory=dict)


def _write_input(fd: int, spec: dict[str, Any], train: Iterable[bytes], validation: Iterable[bytes]) -> None:
    """Spec line, then each dataset as length-prefixed frames ended by an empty frame."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    try:
        write(orjson.dumps(spec) + b"\n")
        for source in (train, validation):
            for chunk in source:
                for start in range(0, len(chunk), FRAME):
                    part = chunk[start:start + FRAME]
                    write(struct.pack(">I", len(part)) + part)
            write(struct.pack(">I", 0))
    except BrokenPipeError:
        pass  # the trainer died; its exit is reported by the reader
    finally:
        os.close(fd)
        for source in (train, validation):
            close = getattr(source, "close", None)
            if close is not None:
                close()


async def run_trainer(
    spec: dict[str, Any],
    train: Iterable[bytes],
    validation: Iterable[bytes],
    *,
    model_fd: int,
    sandbox: Sandbox,
    threads: int,
    on_event: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
    cancel: asyncio.Event | None = None,
) -> TrainerResult:
    """Run one trainer process in `sandbox` to the end; raise TrainerFailed with a safe reason
    otherwise (and the sandbox's own error when it cannot be built)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    spec = {**spec, "model_dir": "/proc/self/fd", "model_file": str(model_fd), "threads": threads}
    try:
        process = await sandbox.spawn(["modelport.finetuning.trainer", "--in-fd", str(in_r), "--out-fd", str(out_w)],
                                      pass_fds=(in_r, out_w, model_fd), threads=threads)
    except BaseException as exc:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        if isinstance(exc, OSError):
            raise ServiceUnavailable(f"could not start the trainer process ({type(exc).__name__})") from exc
        raise
    os.close(in_r)
    os.close(out_w)
    writer = asyncio.create_task(run_blocking(_write_input, in_w, spec, train, validation))
    reader = asyncio.StreamReader(limit=1 << 24)
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(out_r, "rb", 0))
    adapter: bytes | None = None
    summary: dict[str, Any] = {}
    error: TrainerFailed | None = None

    async def read_events() -> None:
        nonlocal adapter, summary, error
        while True:
            line = await reader.readline()
            if not line:
                return
            event = orjson.loads(line)
            kind = event.get("event")
            if kind == "adapter":
                adapter = await reader.readexactly(int(event["size"]))
            elif kind == "done":
                summary = event
            elif kind == "error":
                error = TrainerFailed(str(event.get("code", "internal_error")), str(event.get("message", "")))
            if on_event is not None and kind in ("loaded", "progress", "done"):
                result = on_event(event)
                if asyncio.iscoroutine(result):
                    await result

    events = asyncio.create_task(read_events())
    waiter = asyncio.create_task(cancel.wait()) if cancel is not None else None
    try:
        done, _ = await asyncio.wait([events, *([waiter] if waiter else [])], return_when=asyncio.FIRST_COMPLETED)
        if waiter is not None and waiter in done:
            raise TrainerFailed("cancelled", "the job was cancelled")
        events.result()
        code = await process.wait()
    finally:
        if process.returncode is None:
            await process.kill_and_wait()
        for task in (events, waiter):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        transport.close()
        with contextlib.suppress(Exception):
            await writer
    if error is not None:
        raise error
    if adapter is None or code != 0:
        raise TrainerFailed("internal_error", f"the trainer stopped without a result (exit code {code})")
    return TrainerResult(adapter=adapter, summary=summary)


def default_threads(cpus: int | None = None) -> int:
    """Half the CPUs (at least one): the other half stays with the inference workers."""
    return max(1, (cpus or os.cpu_count() or 2) // 2)


class JobRunner:
    """Polls the job table and runs up to `concurrency` trainers; one instance per server."""

    def __init__(self, service: Any, settings: Any) -> None:
        self.service = service  # FinetuningService (Any: avoids an import cycle with service.py)
        self.settings = settings
        self.concurrency = settings.finetune_concurrency
        self.threads = settings.finetune_threads or default_threads()
        self.running: dict[str, asyncio.Task[None]] = {}
        # The same launcher as the model workers', and the same machine-wide uid pool.
        self.launcher = SandboxLauncher.from_settings(settings, "trainers")

    async def run(self) -> None:
        await run_blocking(self.service.requeue_interrupted, MAX_ATTEMPTS)
        while True:
            try:
                await self.poll()
            except Exception:
                log.exception("fine-tuning queue poll failed")
            await asyncio.sleep(self.settings.finetune_poll_seconds)

    async def poll(self) -> None:
        while len(self.running) < self.concurrency:
            job = await run_blocking(self.service.claim_next)
            if job is None:
                return
            task = asyncio.create_task(self._run(job), name=f"finetune-{job.id}")
            self.running[job.id] = task
            task.add_done_callback(functools.partial(self._finished, job.id))

    def _finished(self, job_id: str, _task: asyncio.Task) -> None:
        self.running.pop(job_id, None)

    async def shutdown(self) -> None:
        """Stop trainers; their jobs stay `running` and are requeued by the next start."""
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        self.launcher.tidy()

    async def _run(self, job: Any) -> None:
        cancel = asyncio.Event()
        watcher = asyncio.create_task(self._watch_cancel(job.id, cancel))
        try:
            model_id = await self._train(job, cancel)
        except JobCancelled as exc:  # its dataset or workspace was deleted: the adapter is shredded
            await run_blocking(self.service.finish, job.id, "cancelled", exc.message)
            log.info("fine-tuning job %s cancelled before it registered a model", job.id)
        except TrainerFailed as exc:
            status = "cancelled" if exc.code == "cancelled" else "failed"
            await run_blocking(self.service.finish, job.id, status, None if status == "cancelled" else exc.message)
            log.info("fine-tuning job %s %s (%s)", job.id, status, exc.code)
        except asyncio.CancelledError:
            raise  # server stopping: the job stays `running` and is requeued on the next start
        except SandboxUnavailable as exc:  # the machine, not a bug: the reason is the job's error
            log.warning("fine-tuning job %s failed: %s", job.id, exc.message)
            await run_blocking(self.service.finish, job.id, "failed", exc.message)
        except Exception as exc:
            message = getattr(exc, "message", None) or f"internal error ({type(exc).__name__}); see the server log"
            log.exception("fine-tuning job %s failed", job.id)
            await run_blocking(self.service.finish, job.id, "failed", message)
        else:
            await run_blocking(self.service.finish, job.id, "succeeded", None, model_id)
            log.info("fine-tuning job %s succeeded: model %s", job.id, model_id)
        finally:
            watcher.cancel()

    async def _watch_cancel(self, job_id: str, cancel: asyncio.Event) -> None:
        while not cancel.is_set():
            await asyncio.sleep(self.settings.finetune_poll_seconds)
            if await run_blocking(self.service.cancel_requested, job_id):
                cancel.set()

    async def _train(self, job: Any, cancel: asyncio.Event) -> str:
        svc = self.service
        base = await run_blocking(svc.base_model, job)
        gguf = next(p for rel, p in svc.catalog.file_paths(base).items() if rel.endswith(".gguf"))
        # First the sandbox: a job that cannot have one fails before any data is decrypted.
        sandbox = await self.launcher.create(name=job.id)
        try:
            await run_blocking(svc.set_isolation, job.id, sandbox.isolation.as_dict())
            datastore = svc.datastore
            # Plaintext streams, decrypted chunk by chunk as the trainer reads them (P11).
            train = await run_blocking(datastore.open, job.workspace_id, job.dataset_id)
            validation: Any = []
            if job.validation_dataset_id:
                validation = await run_blocking(datastore.open, job.workspace_id, job.validation_dataset_id)
            model_fd = os.open(gguf, os.O_RDONLY | os.O_CLOEXEC)
            spec = {"job_id": job.id, "hyperparameters": job.hyperparameters, "name": f"{base.name} LoRA",
                    "arch": (base.model_metadata or {}).get("architecture", "llama")}

            async def progress(event: dict[str, Any]) -> None:
                if event.get("event") == "progress":
                    await run_blocking(svc.record_progress, job.id, event)

            try:
                result = await run_trainer(spec, train, validation, model_fd=model_fd, sandbox=sandbox,
                                           threads=self.threads, on_event=progress, cancel=cancel)
            finally:
                os.close(model_fd)
        finally:
            await sandbox.close()
        return await run_blocking(svc.register, job, result.adapter)
