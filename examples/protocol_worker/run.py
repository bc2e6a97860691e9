"""Drive worker.py, a from-scratch worker, with the generic Adapter.

Run it with `python examples/protocol_worker/run.py`. Any program that speaks the protocol
works the same way: sp.Adapter("/path/to/program", script_args=[...]).
"""

import sys
from pathlib import Path

import trio

import snakepit_trio as sp

WORKER = Path(__file__).resolve().with_name("worker.py")


async def main() -> None:
    for wire in ("json", "auto"):
        adapter = sp.Adapter(sys.executable, WORKER, wire=wire)
        async with sp.open_pool(adapter, size=2) as pool:
            print(f"wire={wire}: features {sorted(pool.features) or 'none (Snakepit v0.3 subset)'}")
            print("  reverse:", await pool.execute("reverse", {"text": "snakepit"}))
            print("  add:", await pool.execute("add", {"numbers": [1, 2, 3.5]}))
            try:
                await pool.execute("fly")
            except sp.UnsupportedCommand as exc:
                print("  fly ->", type(exc).__name__, exc)


if __name__ == "__main__":
    trio.run(main)
