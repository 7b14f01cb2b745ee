"""Datastore throughput and memory: the double AES-256-GCM layer against single-core OpenSSL.

Run:  .venv/bin/python benchmarks/bench_datastore.py            (1 GiB and 256 MiB, ~2-3 minutes)
      .venv/bin/python benchmarks/bench_datastore.py --quick    (64 MiB and 16 MiB, a smoke run)

Everything runs pinned to one CPU (the same one for OpenSSL), each measurement in a fresh child
process so that its peak RSS (ru_maxrss) belongs to it alone. Measured:

- OpenSSL's single-layer ceiling: `openssl speed -evp aes-256-gcm -bytes 16384 -seconds 3`
  (run before and after the Python measurements; the better run is the reference);
- in memory, no disk I/O: `encrypt_object` / `decrypt_object` of the double layer, from a
  reader that copies a random pattern (as a file read would) into preallocated ciphertext memory,
  without and with the plaintext sha256 that `Datastore.put` records; best of N runs;
- end to end, disk to disk: `Datastore.put` from a file and `Datastore.open` streamed to a file;
- chunk size sweep for in-memory encryption;
- whether AES-GCM in `cryptography` releases the GIL (two threads vs one on two cores).

Peak memory is shown for two object sizes: tracemalloc's peak of Python allocations during the
operation and the growth of the process's peak RSS. Both stay flat when the object grows 4x.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelport.datastore.envelope import (  # noqa: E402
    DataKeys,
    ObjectHeader,
    ciphertext_size,
    decrypt_object,
    encrypt_object,
)

MiB = 1 << 20
GiB = 1 << 30


# ------------------------------------------------------------------------------------- helpers
def pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PatternReader(io.RawIOBase):
    """`size` bytes of a repeated random pattern, delivered by readinto (a memcpy, like a file read)."""

    def __init__(self, size: int, pattern: bytes) -> None:
        self._left = size
        self._pattern = memoryview(pattern)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        view = memoryview(buf)
        n = min(len(view), self._left, len(self._pattern) - self._pos)
        view[:n] = self._pattern[self._pos : self._pos + n]
        self._pos = (self._pos + n) % len(self._pattern)
        self._left -= n
        return n


class MemoryReader(io.RawIOBase):
    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        n = min(len(buf), len(self._view) - self._pos)
        memoryview(buf)[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n


class MemoryWriter:
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        # Touch every page now, so the kernel's page faults are not timed as encryption.
        self.buf[::4096] = b"\x01" * len(range(0, size, 4096))
        self._view = memoryview(self.buf)
        self.pos = 0

    def write(self, data) -> None:
        n = len(data)
        self._view[self.pos : self.pos + n] = data
        self.pos += n


def openssl_speed(seconds: int, cpu: int) -> float:
    """Single-core OpenSSL AES-256-GCM at 16 KiB blocks, in GB/s (10^9 bytes)."""
    out = subprocess.run(
        ["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    ).stdout
    match = re.search(r"^AES-256-GCM\s+([\d.]+)k\s*$", out, re.MULTILINE)
    if not match:
        raise RuntimeError(f"cannot parse openssl speed output:\n{out}")
    return float(match.group(1)) * 1000 / 1e9


# ------------------------------------------------------------------------------ child processes
class Clock:
    """Wall and CPU time of a block. CPU time is what `openssl speed` divides by (user time by
    default), and it is far less disturbed by other processes on a shared 2-core machine."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


class Memory:
    """tracemalloc peak of Python allocations and growth of the process's peak RSS in a block."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.trace_mib = self.rss_mib = float("nan")

    def __enter__(self) -> Memory:
        if self.on:
            self._rss = maxrss_mib()
            tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self.trace_mib = tracemalloc.get_traced_memory()[1] / MiB
            tracemalloc.stop()
            self.rss_mib = maxrss_mib() - self._rss


def child_memory(size: int, chunk: int, digest: bool, trace: bool) -> dict:
    """Encrypt then decrypt `size` bytes in memory (ciphertext in preallocated memory)."""
    pattern = os.urandom(4 * MiB)
    keys = DataKeys.generate()
    header = ObjectHeader.new("ws", "bench", 1, chunk)
    total = ciphertext_size(size, len(header.encode()), chunk)
    sink = MemoryWriter(total)
    with Memory(trace) as enc_mem, Clock() as enc:
        encrypt_object(PatternReader(size, pattern), sink.write, header, keys, digest=digest)
    assert sink.pos == total
    got = 0
    with Memory(trace) as dec_mem, Clock() as dec:
        reader = MemoryReader(memoryview(sink.buf))
        for piece in decrypt_object(reader, total, keys, workspace_id="ws", object_id="bench", version=1):
            got += len(piece)
    assert got == size
    return {
        "enc_wall": size / enc.wall / 1e9,
        "enc_cpu": size / enc.cpu / 1e9,
        "dec_wall": size / dec.wall / 1e9,
        "dec_cpu": size / dec.cpu / 1e9,
        "enc_trace": enc_mem.trace_mib,
        "enc_rss": enc_mem.rss_mib,
        "dec_trace": dec_mem.trace_mib,
        "dec_rss": dec_mem.rss_mib,
    }


def child_disk(size: int, chunk: int, workdir: str) -> dict:
    """Datastore.put from a file and Datastore.open streamed to a file, beside a plain copy."""
    from modelport.datastore import Datastore

    work = Path(workdir)
    src, copy, out = work / "source.bin", work / "copy.bin", work / "restored.bin"
    pattern = os.urandom(4 * MiB)
    with open(src, "wb") as fh:
        reader, buf = PatternReader(size, pattern), bytearray(4 * MiB)
        while n := reader.readinto(buf):
            fh.write(memoryview(buf)[:n])
    ds = Datastore.create(
        work / "datastore",
        platform_master_key=os.urandom(32),
        workspace_master_key=os.urandom(32),
        chunk_size=chunk,
    )
    with Clock() as plain:  # the disk's own ceiling: the same bytes read, written and fsynced
        with open(src, "rb", buffering=0) as fi, open(copy, "wb", buffering=0) as fo:
            buf = bytearray(chunk)
            while n := fi.readinto(buf):
                fo.write(memoryview(buf)[:n])
            os.fsync(fo.fileno())
    copy.unlink()
    with Memory(True) as put_mem, Clock() as put:
        with open(src, "rb", buffering=0) as fh:
            info = ds.put("ws", "bench", fh)
    with Memory(True) as get_mem, Clock() as get:
        with ds.open("ws", "bench") as stream, open(out, "wb", buffering=0) as fh:
            for piece in stream:
                fh.write(piece)
            os.fsync(fh.fileno())
    assert info.size == size and out.stat().st_size == size
    return {
        "copy_wall": size / plain.wall / 1e9,
        "put_wall": size / put.wall / 1e9,
        "put_cpu": size / put.cpu / 1e9,
        "get_wall": size / get.wall / 1e9,
        "get_cpu": size / get.cpu / 1e9,
        "put_trace": put_mem.trace_mib,
        "put_rss": put_mem.rss_mib,
        "get_trace": get_mem.trace_mib,
        "get_rss": get_mem.rss_mib,
    }


def child_gil(size: int, chunk: int) -> dict:
    """Does AES-GCM in `cryptography` release the GIL? Two ways to tell.

    1. While the main thread is inside one AES-GCM call on `size` bytes, count how often another
       Python thread gets to run; with the GIL held it cannot run at all during the call. This
       works whatever the load on the machine.
    2. Two threads encrypting objects at once vs one after the other: a speedup near 2 on two
       idle cores (other work on the machine lowers it).
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    gcm, data = AESGCM(AESGCM.generate_key(256)), os.urandom(size)
    counter, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.05)
    before = counter[0]
    with Clock() as call:
        gcm.encrypt(os.urandom(12), data, b"")
    during = counter[0] - before
    stop.set()
    spinner.join()
    pattern = os.urandom(4 * MiB)

    def work() -> None:
        header = ObjectHeader.new("ws", "gil", 1, chunk)
        encrypt_object(PatternReader(size, pattern), lambda _v: None, header, DataKeys.generate(), digest=False)

    best = 0.0
    for _ in range(3):
        with Clock() as one:
            work()
        threads = [threading.Thread(target=work) for _ in range(2)]
        with Clock() as two:
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        best = max(best, 2 * one.wall / two.wall)
    return {"speedup": best, "spins_during_call": during, "call_ms": call.wall * 1000}


def run_child(kind: str, cpus: set[int], **kwargs: object) -> dict:
    spec = json.dumps({"kind": kind, "cpus": sorted(cpus), **kwargs})
    out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(spec: dict) -> None:
    kind = spec.pop("kind")
    os.sched_setaffinity(0, set(spec.pop("cpus")))
    fn = {"memory": child_memory, "disk": child_disk, "gil": child_gil}[kind]
    print(json.dumps(fn(**spec)))


# ----------------------------------------------------------------------------------------- main
def row(label: str, *cells: str, width: int = 46) -> None:
    print(f"{label:<{width}}" + "".join(f"{c:>12}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin to")
    parser.add_argument("--rounds", type=int, default=3, help="OpenSSL / double-layer rounds, interleaved")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    pin(args.cpu)
    cpu = {args.cpu}
    big, small = (64 * MiB, 16 * MiB) if args.quick else (GiB, 256 * MiB)
    seconds = 1 if args.quick else 3
    name = {big: f"{big // MiB} MiB", small: f"{small // MiB} MiB"}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pinned to CPU {args.cpu}, chunk 1 MiB")

    # Interleaved rounds: each ratio compares runs made seconds apart, under the same load.
    rounds = []
    for _ in range(args.rounds):
        ssl = openssl_speed(seconds, args.cpu)
        mem = run_child("memory", cpu, size=big, chunk=MiB, digest=False, trace=False)
        rounds.append((ssl, mem))
    with_digest = run_child("memory", cpu, size=big, chunk=MiB, digest=True, trace=False)
    traced = {size: run_child("memory", cpu, size=size, chunk=MiB, digest=False, trace=True) for size in (small, big)}
    sweep = {
        cs: run_child("memory", cpu, size=small, chunk=cs, digest=False, trace=False)
        for cs in (64 << 10, 256 << 10, MiB, 4 * MiB)
    }
    with tempfile.TemporaryDirectory(prefix="bench-datastore-", dir=os.environ.get("BENCH_TMPDIR")) as tmp:
        disk = {}
        for size in (small, big):
            (Path(tmp) / str(size)).mkdir()
            disk[size] = run_child("disk", cpu, size=size, chunk=MiB, workdir=str(Path(tmp) / str(size)))
    gil = run_child("gil", set(range(os.cpu_count() or 1)), size=small, chunk=MiB)

    ssl_best = max(r[0] for r in rounds)
    enc_ratios = sorted(m["enc_cpu"] / s for s, m in rounds)
    dec_ratios = sorted(m["dec_cpu"] / s for s, m in rounds)
    median = len(rounds) // 2

    print()
    print(
        "OpenSSL single layer, 16 KiB blocks, one core (GB/s, user CPU time): "
        + ", ".join(f"{s:.2f}" for s, _ in rounds)
    )
    print()
    row("double layer, in memory, " + name[big], "wall GB/s", "CPU GB/s", "vs OpenSSL")
    for i, (s, m) in enumerate(rounds, 1):
        row(f"  round {i}: encrypt", f"{m['enc_wall']:.2f}", f"{m['enc_cpu']:.2f}", f"{m['enc_cpu'] / s:.0%}")
        row(f"  round {i}: decrypt", f"{m['dec_wall']:.2f}", f"{m['dec_cpu']:.2f}", f"{m['dec_cpu'] / s:.0%}")
    row(
        "  encrypt + sha256 (what put does)",
        f"{with_digest['enc_wall']:.2f}",
        f"{with_digest['enc_cpu']:.2f}",
        f"{with_digest['enc_cpu'] / ssl_best:.0%}",
    )
    print()
    row("disk to disk (wall GB/s)", "plain copy", "put", "open")
    for size in (small, big):
        d = disk[size]
        row(f"  {name[size]}", f"{d['copy_wall']:.2f}", f"{d['put_wall']:.2f}", f"{d['get_wall']:.2f}")
    print()
    row(f"chunk size, in memory, {name[small]} (CPU GB/s)", "encrypt", "decrypt")
    for cs, r in sweep.items():
        row(f"  {cs >> 10} KiB", f"{r['enc_cpu']:.2f}", f"{r['dec_cpu']:.2f}")
    print()
    row("peak memory, MiB", "tracemalloc", "RSS growth")
    for size in (small, big):
        t = traced[size]
        row(f"  in memory encrypt, {name[size]}", f"{t['enc_trace']:.1f}", f"{t['enc_rss']:.1f}")
        row(f"  in memory decrypt, {name[size]}", f"{t['dec_trace']:.1f}", f"{t['dec_rss']:.1f}")
    for size in (small, big):
        d = disk[size]
        row(f"  Datastore.put from disk, {name[size]}", f"{d['put_trace']:.1f}", f"{d['put_rss']:.1f}")
        row(f"  Datastore.open to disk, {name[size]}", f"{d['get_trace']:.1f}", f"{d['get_rss']:.1f}")
    print()
    released = "released" if gil["spins_during_call"] > 1000 else "held"
    print(
        f"GIL during AES-GCM: {released}. Another Python thread ran {gil['spins_during_call']:,} loop "
        f"iterations during one {gil['call_ms']:.0f} ms AES-GCM call on {name[small]}; two threads "
        f"encrypting at once vs one: best speedup {gil['speedup']:.2f}x on {os.cpu_count()} CPUs"
    )
    enc_median = enc_ratios[median]
    print(
        f"target: in-memory double-layer encrypt >= 40% of OpenSSL single layer: median {enc_median:.0%} "
        f"(rounds {', '.join(f'{r:.0%}' for r in enc_ratios)}; decrypt median {dec_ratios[median]:.0%}) "
        f"-> {'met' if enc_median >= 0.40 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
