"""Where the CPU that metering and the quota check add to a gateway request goes: the servers of
`bench_gateway.py --metering-only` (off, memory, optionally memory-thread and redis), each profiled
with cProfile (its event loop's thread) while the same load runs through them, interleaved.

    .venv/bin/python benchmarks/profile_metering.py [--requests 2000] [--clients 32] [--no-journal]
                                                    [--redis redis://127.0.0.1:6379/15] [--top 25]

Two windows, one profile each: one client sending requests one after the other (each request its
own commit), then `--clients` concurrent clients for `--seconds`. For each server and window it
prints the CPU per request of each thread of the server (from /proc/<pid>/task/*/schedstat: the
event loop's, the metering writer's, run_blocking's pool, others), the usage commits made by the
event loop and by the writer thread, and the garbage collector's runs and CPU by generation; then
the functions whose own CPU time per request (cProfile's tottime, timed with the thread's CPU
clock) differs most between `off` and each other server. cProfile's own overhead inflates every
figure (several times for small Python calls, little for C calls such as SQLite's): compare the
servers with each other, not with bench_gateway.py's unprofiled figures. `--gc-only` runs
without cProfile (the threads' CPU and the collector's figures are then unprofiled). The
profiles are kept with `--keep DIR` (for `python -m pstats`).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import uvloop
from bench_gateway import (
    METERING_ENV,
    PROFILE_ENV,
    REQUEST_TIMEOUT,
    Call,
    Setup,
    gateway_call,
    latencies,
    throughput,
    warm_and_wait,
)

Stats = dict[tuple[str, int, str], tuple[float, float, int]]  # function -> (tottime, cumtime, calls)


def wait_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} was not written")
        time.sleep(0.05)
    time.sleep(0.2)  # the .json is written after the .prof


async def drive(setups: dict[str, Setup], out: Path, n: int, clients: int, seconds: float) -> dict[str, dict]:
    """Both windows on every server; returns {window: {server: requests}}."""
    done: dict[str, dict[str, int]] = {"seq": {}, "conc": {}}
    # the servers' start-up work (the classifier's warm-up thread) must not fall into a window
    await warm_and_wait(list(setups.values()))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=REQUEST_TIMEOUT) as session:
        counted = {name: gateway_call(setup, session) for name, setup in setups.items()}

        def counting(name: str) -> Call:
            async def call() -> None:
                await counted[name]()
                done[window][name] += 1
            return call

        window = "warm-up"
        done[window] = {name: 0 for name in setups}
        calls = {name: counting(name) for name in setups}
        for call in calls.values():
            await latencies(call, 20)  # this session's connections
        for window in ("seq", "conc"):
            for setup in setups.values():
                setup.server.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            chunk = max(1, n // 10)
            for name in setups:
                done[window][name] = 0
            if window == "seq":
                for _ in range(0, n, chunk):  # interleaved, as bench_gateway.py does
                    for call in calls.values():
                        await latencies(call, chunk)
            else:
                for call in calls.values():
                    await throughput(call, clients, seconds)
            for setup in setups.values():
                setup.server.send_signal(signal.SIGUSR2)
            for name in setups:
                wait_file(out / f"{name}.json")
                for ext in ("prof", "json"):
                    (out / f"{name}.{ext}").rename(out / f"{name}-{window}.{ext}")
    return done


def load_stats(path: Path) -> Stats:
    st = pstats.Stats(str(path))
    return {k: (v[2], v[3], v[1]) for k, v in st.stats.items()}  # type: ignore[attr-defined]


def label(key: tuple[str, int, str]) -> str:
    file, line, fn = key
    for marker in ("site-packages/", "modelport/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{file}:{line}({fn})" if line else fn


def report(out: Path, done: dict[str, dict[str, int]], top: int, gc_only: bool) -> None:
    for window, title in (("seq", "1 client"), ("conc", "concurrent clients")):
        print(f"\n=== {title} ===")
        for name, n in done[window].items():
            info = json.loads((out / f"{name}-{window}.json").read_text())
            threads = ", ".join(f"{k} {v / n * 1e6:.0f}" for k, v in sorted(info["thread_cpu_s"].items())
                                if v > 0)
            c = info["counters"]
            g = info["gc"]
            gc_cost = ", ".join(f"gen{i} {r} runs {t / n * 1e6:.1f} µs/req" for i, (r, t) in
                                enumerate(zip(g["runs"], g["cpu_s"], strict=True)))
            print(f"{name:<14} {n:>6} requests; CPU µs/request by thread: {threads}; "
                  f"usage commits: {c['commits']}; "
                  f"garbage collector: {gc_cost} ({g['objects']:,} objects tracked, {g['frozen']:,} frozen)")
        if gc_only:
            continue
        base = load_stats(out / f"off-{window}.prof")
        n_off = done[window]["off"]
        for name, n in done[window].items():
            if name == "off":
                continue
            other = load_stats(out / f"{name}-{window}.prof")
            rows = []
            for key in set(base) | set(other):
                t0, c0, k0 = base.get(key, (0.0, 0.0, 0))
                t1, c1, k1 = other.get(key, (0.0, 0.0, 0))
                rows.append((t1 / n * 1e6 - t0 / n_off * 1e6, c1 / n * 1e6 - c0 / n_off * 1e6,
                             k1 / n - k0 / n_off, key))
            total = sum(r[0] for r in rows)
            print(f"\n{name} - off, event loop thread, own time per request (profiled µs; sum {total:+.1f}):")
            print(f"{'tottime':>9} {'cumtime':>9} {'calls':>7}  function")
            for d_tot, d_cum, d_calls, key in sorted(rows, key=lambda r: -abs(r[0]))[:top]:
                print(f"{d_tot:>+9.1f} {d_cum:>+9.1f} {d_calls:>+7.2f}  {label(key)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--redis", metavar="URL", default=None)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", metavar="DIR", default=None, help="keep the profiles here")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--gc-only", action="store_true",
                        help="no cProfile: the CPU per thread and the garbage collector's runs and time only")
    args = parser.parse_args()
    configs: dict[str, dict] = {"off": {"without": "meter,quota"}, "memory": {"without": "profile"}}
    if args.no_journal:
        configs["memory-awaited"] = {"without": "journal"}
    if args.redis:
        configs["redis"] = {"without": "profile", "env_extra": {"MODELPORT_REDIS_URL": args.redis}}
    with tempfile.TemporaryDirectory(prefix="profile-metering-") as tmp:
        out = Path(tmp) / "profiles"
        out.mkdir()
        setups: dict[str, Setup] = {}
        try:
            for name, kw in configs.items():
                env = {**METERING_ENV, **kw.pop("env_extra", {}), PROFILE_ENV: str(out / name)}
                if args.gc_only:
                    env[PROFILE_ENV + "_GC_ONLY"] = "1"
                print(f"starting the server '{name}'...", file=sys.stderr)
                setups[name] = Setup(Path(tmp) / f"home-{name}", args.log_level, env, proxy=False, **kw)
            done = uvloop.run(drive(setups, out, args.requests, args.clients, args.seconds))
        finally:
            for setup in setups.values():
                setup.stop()
        print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        report(out, done, args.top, args.gc_only)
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
