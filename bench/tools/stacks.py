"""Fold py-spy's raw (collapsed) stacks into per-process tables of where the CPU went.

    python bench/experiments/stacks.py out.txt [--top 25] [--match snakepit_trio]

For each profiled process: self time per function, inclusive time per function, and self time
per source file, as a share of that process's samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def short_file(path: str) -> str:
    parts = Path(path).parts
    for anchor in ("site-packages", "python3.11", "main", "bridges"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return "/".join(parts[-3:])


def frame_key(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, "?"
    return match["func"], short_file(match["file"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--match", default="", help="inclusive table: only functions in files matching"
    )
    args = parser.parse_args()
    totals: Counter[str] = Counter()
    self_time: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    inclusive: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    by_file: dict[str, Counter[str]] = defaultdict(Counter)
    for line in args.path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        process = "main"
        while frames and frames[0].startswith("process "):
            # py-spy nests a child's stacks under its parent's "process" frame: keep the last.
            command = frames.pop(0)
            process = "worker" if "snakepit_bridge" in command or "raw_echo" in command else "pool"
        if not frames:
            continue
        totals[process] += count
        leaf = frame_key(frames[-1])
        self_time[process][leaf] += count
        by_file[process][leaf[1]] += count
        for key in {frame_key(f) for f in frames}:
            inclusive[process][key] += count
    for process, total in totals.most_common():
        print(f"\n=== {process}: {total} samples")
        print("-- self time by file")
        for file, count in by_file[process].most_common(12):
            print(f"{100 * count / total:6.1f}%  {file}")
        print("-- self time by function")
        for (func, file), count in self_time[process].most_common(args.top):
            print(f"{100 * count / total:6.1f}%  {func}  ({file})")
        print(
            "-- inclusive time by function"
            + (f" (files matching {args.match!r})" if args.match else "")
        )
        rows = [(k, c) for k, c in inclusive[process].most_common() if args.match in k[1]]
        for (func, file), count in rows[: args.top]:
            print(f"{100 * count / total:6.1f}%  {func}  ({file})")


if __name__ == "__main__":
    main()
