"""Summarise a py-spy `--format raw` profile: the top functions by own and by total time.

Each line of the file is a stack, root first, frames joined by `;`, then a
space and the number of samples. Own time goes to the innermost frame; total
time to every distinct function on the stack (counted once per stack, so
recursion does not inflate it). Line numbers are dropped so a function's lines
add up. Idle samples are not in the file unless py-spy ran with `--idle`, and the samples
of a worker thread waiting for work are dropped (IDLE).

Under uvloop a coroutine resumed from C often shows without the frames above
it, so totals of outer functions are lower bounds; own times are exact. The
own time of `Runner.run` is the event loop's C code (I/O, scheduling).

    python bench/profile_summary.py bench/profile-load.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
# Worker threads' loops: their own time is waiting for work (py-spy cannot always tell a
# thread blocked in a C lock from a running one); their work shows in the frames they call.
IDLE = {"_connection_worker_thread (aiosqlite/core.py)", "_worker (concurrent/futures/thread.py)"}


def function(frame: str) -> str:
    name = _LINE.sub(")", frame.strip())
    return name.replace(str(Path.cwd()) + "/", "").replace("/tmp/venv/lib/python3.11/site-packages/", "")


def package(name: str) -> str:
    """`f (starlette/routing.py)` -> `starlette`; our own code by module: `chat/sse.py`."""
    if name.startswith("Runner.run "):
        return "event loop (C)"
    path = name.rpartition(" (")[2].rstrip(")")
    if path.startswith(("chat/", "app.py")):
        return path
    return path.split("/")[0].removesuffix(".py")


def load(path: Path) -> tuple[Counter[str], Counter[str], int]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [function(f) for f in stack.split(";") if f.strip()]
        if not frames or not count.isdigit() or frames[-1] in IDLE:
            continue
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    return own, total, samples


def summary(path: Path, top: int = 15) -> str:
    own, total, samples = load(path)
    if not samples:
        return f"{path}: no samples"
    lines = [f"{samples} samples (busy time only)", f"{'own %':>6} {'total %':>7}  function"]
    for name, n in own.most_common(top):
        lines.append(f"{100 * n / samples:6.1f} {100 * total[name] / samples:7.1f}  {name}")
    packages: Counter[str] = Counter()
    for name, n in own.items():
        packages[package(name)] += n
    lines.append("")
    lines.append("own time by package (our modules one by one):")
    for name, n in packages.most_common(top):
        lines.append(f"{100 * n / samples:6.1f}  {name}")
    lines.append("")
    lines.append("by total time (functions below the event loop):")
    shown = 0
    for name, n in total.most_common():
        if 100 * n / samples > 97:  # the loop, the thread bootstrap: always on the stack
            continue
        lines.append(f"{100 * own[name] / samples:6.1f} {100 * n / samples:7.1f}  {name}")
        shown += 1
        if shown == top:
            break
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summary(args.path, args.top))
