"""Sessions on Node.js workers, with state kept inside the worker (examples/node_counter.js).

    python examples/node_session.py

Worker-held state needs every call of a session on the same worker, so this pool uses
affinity="strict": a call waits for its session's worker instead of taking another one.
Needs `node` on PATH; without it the example says so and exits 0.
"""

import shutil
import sys
from pathlib import Path

import trio

import snakepit_trio as sp

MODULE = Path(__file__).with_name("node_counter.js")


async def shopper(pool: sp.Pool, session: str, amounts: list[int]) -> None:
    for amount in amounts:
        reply = await pool.execute_in_session(session, "tally_add", {"amount": amount})
        print(f"{session}: +{amount} -> {reply['total']} (worker pid {reply['pid']})")
    assert reply["total"] == sum(amounts), "the session's state was split across workers"
    await pool.execute_in_session(session, "tally_reset")


async def main() -> None:
    config = sp.PoolConfig(affinity="strict")
    async with sp.open_pool(sp.NodeAdapter(MODULE), size=2, config=config) as pool:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shopper, pool, "cart-1", [5, 10, 20])
            nursery.start_soon(shopper, pool, "cart-2", [1, 2, 3, 4])
        print("sessions:", pool.sessions.list_sessions())


if __name__ == "__main__":
    if shutil.which("node") is None:
        print("skipped: this example needs Node.js ('node' is not on PATH)")
        sys.exit(0)
    trio.run(main)
