"""Fold py-spy's raw (collapsed) stacks into per-role tables of where the CPU went.

    py-spy record --subprocesses -f raw -o out.txt -- python bench/tools/hotloop.py mux 10
    python bench/tools/stacks.py out.txt [--top 25] [--match snakepit_trio]

For each role (the pool; the workers; a worker's fork, such as the bridge's lifeline watcher;
a hardened pool's nannies), summed over the processes of that role: self time per source file,
self time per function, and inclusive time per function, as a share of that role's samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")
# py-spy nests a child's stacks under one 'process PID:"COMMAND"' frame per ancestor. Frames
# are joined with ';', and a command may hold one (the bridge starts as ``-c "...; main()"``),
# so the process frames are matched whole, not split on ';'.
_PROCESS = re.compile(r'process \d+:"(?P<command>.*?)"(?:;|$)')
# Where a file's own name starts, for py-spy's --full-filenames: after an installation folder.
_INSTALL_DIR = re.compile(r"^(site-packages|dist-packages|python3(\.\d+)?)$")
_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Profile:
    """The samples of one role."""

    total: int = 0
    self_time: Counter[tuple[str, str]] = field(default_factory=Counter)
    inclusive: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_file: Counter[str] = field(default_factory=Counter)


def short_file(path: str) -> str:
    """``path`` without the folder it was installed or checked out in."""
    parts = Path(path).parts
    for at in range(len(parts) - 2, -1, -1):
        if _INSTALL_DIR.match(parts[at]):
            return "/".join(parts[at + 1 :])
    file = Path(path)
    for root in (_ROOT / "bridges" / "python", _ROOT):  # this checkout, wherever it is
        if file.is_absolute() and file.is_relative_to(root):
            return file.relative_to(root).as_posix()
    return "/".join(parts[-3:])


def frame_key(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, "?"
    return match["func"], short_file(match["file"])


def role(commands: list[str]) -> str:
    """The role of the innermost process, from the commands of it and its ancestors."""
    if not commands:
        return "main"  # recorded without --subprocesses
    if len(commands) == 1:
        return "pool"
    command = commands[-1]
    if command == commands[-2]:
        return f"{role(commands[:-1])} fork"
    if "snakepit_trio_bridge.nanny" in command:
        return "nanny"
    if "snakepit_trio_bridge" in command or "raw_echo" in command:
        return "worker"
    return "other"


def fold(lines: Iterable[str]) -> dict[str, Profile]:
    """Each role's samples from py-spy's raw output (``frame;frame;... count`` a line)."""
    profiles: dict[str, Profile] = {}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        commands: list[str] = []
        at = 0
        while match := _PROCESS.match(stack, at):
            commands.append(match["command"])
            at = match.end()
        frames = stack[at:].split(";") if at < len(stack) else []
        if not frames:
            continue  # a process seen with no Python frame (starting, or in native code)
        profile = profiles.setdefault(role(commands), Profile())
        profile.total += count
        leaf = frame_key(frames[-1])
        profile.self_time[leaf] += count
        profile.by_file[leaf[1]] += count
        for key in {frame_key(f) for f in frames}:
            profile.inclusive[key] += count
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--match", default="", help="inclusive table: only functions in files matching"
    )
    args = parser.parse_args()
    profiles = fold(args.path.read_text().splitlines())
    for name, profile in sorted(profiles.items(), key=lambda item: -item[1].total):
        total = profile.total
        print(f"\n=== {name}: {total} samples")
        print("-- self time by file")
        for file, count in profile.by_file.most_common(12):
            print(f"{100 * count / total:6.1f}%  {file}")
        print("-- self time by function")
        for (func, file), count in profile.self_time.most_common(args.top):
            print(f"{100 * count / total:6.1f}%  {func}  ({file})")
        print(
            "-- inclusive time by function"
            + (f" (files matching {args.match!r})" if args.match else "")
        )
        rows = [(k, c) for k, c in profile.inclusive.most_common() if args.match in k[1]]
        for (func, file), count in rows[: args.top]:
            print(f"{100 * count / total:6.1f}%  {func}  ({file})")


if __name__ == "__main__":
    main()
