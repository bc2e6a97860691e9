"""``sweep``: orphaned workers of dead pools, listed, and killed with ``--kill``."""

from __future__ import annotations

import argparse

import snakepit_trio as sp

from ._common import EXIT_OK, dumps, table

__all__ = ["cmd_sweep"]


def cmd_sweep(ns: argparse.Namespace) -> int:
    orphans = sp.sweep_orphans(dry_run=not ns.kill, all_users=ns.all_users)
    if ns.json:
        print(
            dumps(
                [
                    {"pid": o.pid, "run_id": o.run_id, "cmdline": o.cmdline, "killed": o.killed}
                    for o in orphans
                ]
            )
        )
        return EXIT_OK
    if not orphans:
        print("no orphaned workers found")
        return EXIT_OK
    rows: list[list[object]] = [["pid", "run id", "killed", "command line"]]
    for o in orphans:
        rows.append([o.pid, o.run_id, "yes" if o.killed else "no", o.cmdline])
    for text in table(rows, indent="  "):
        print(text)
    if ns.kill:
        print(f"killed {sum(1 for o in orphans if o.killed)} of {len(orphans)} orphaned workers")
    else:
        print(f"{len(orphans)} orphaned workers found; dry run, nothing killed (use --kill)")
    return EXIT_OK
