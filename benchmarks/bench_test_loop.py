"""What the fast test loop pays before a test runs: `python benchmarks/bench_test_loop.py`.

`make test-fast` spends CPU on three things besides the tests' own work, and this measures each in
child processes (user + system CPU, from the children's rusage), `--rounds` times, median:

- `import`: `python -c "import modelport.api.app"`, what every test server and every pytest-xdist
  worker that builds an app in process pays first;
- `server`: a test server started and stopped as the `server` fixture does (tests/support/server.py:
  `modelport serve` until /readyz answers, then SIGINT), and `lean`, as `lean_server` does (no
  default `chat` deployment); 68 test modules start one of these;
- `collect` (with `--collect`): `pytest --collect-only` of the fast selection, which each xdist
  worker pays once (twice in all under `-n 2`).

Python caches compiled modules and pytest caches its assertion-rewritten test modules in
__pycache__ unless PYTHONDONTWRITEBYTECODE is set; the line "bytecode cache" says which applies
(set, every process compiles the package and rewrites the test modules again). Prints the load
average and the CPU steal of the run beside the figures: compare figures of one run only.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.host import cpu_ticks, steal_since  # noqa: E402
from tests.support.server import lean_env, start_server  # noqa: E402

FAST = "not chat_model and not training and not classifier and not slow"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(run: Callable[[], None]) -> tuple[float, float]:
    """(CPU seconds of the children that `run` started and waited for, wall seconds)."""
    cpu, wall = children_cpu(), time.perf_counter()
    run()
    return children_cpu() - cpu, time.perf_counter() - wall


def import_app() -> None:
    subprocess.run([sys.executable, "-c", "import modelport.api.app"], check=True, cwd=ROOT)


def server(env_extra: dict[str, str] | None) -> Callable[[], None]:
    def run() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-test-loop-") as tmp:
            s = start_server(Path(tmp) / "home", env_extra=env_extra)
            code = s.stop()
            if code not in (0, -2, 130):
                raise RuntimeError(f"the server stopped with {code}:\n{s.logs()}")
    return run


def collect() -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", FAST],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"collection failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--collect", action="store_true", help="also collect the fast selection (~10-20 s CPU a round)")
    ap.add_argument("--only", choices=["import", "server", "lean", "collect"], action="append",
                    help="measure only these (repeatable)")
    args = ap.parse_args()
    # What a test sees (tests/conftest.py): no MODELPORT_* settings from this shell.
    for key in [k for k in os.environ if k.startswith("MODELPORT_") and k != "MODELPORT_CACHE_DIR"]:
        del os.environ[key]
    cache = "off (PYTHONDONTWRITEBYTECODE is set)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    print(f"load average {os.getloadavg()[0]:.2f}; bytecode cache {cache}")
    cases: dict[str, Callable[[], None]] = {"import": import_app, "server": server(None), "lean": server(lean_env())}
    if args.collect:
        cases["collect"] = collect
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only}
    ticks = cpu_ticks()
    for name, run in cases.items():
        run()  # warm: the page cache, and __pycache__ where it is written
        cpu, wall = zip(*(measured(run) for _ in range(args.rounds)), strict=True)
        print(f"{name:8s} CPU {statistics.median(cpu):6.2f} s (min {min(cpu):.2f}, max {max(cpu):.2f}), "
              f"wall {statistics.median(wall):6.2f} s, {args.rounds} rounds")
    print(f"steal {steal_since(ticks):.1%}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
