"""Stateless calls on a pool of Node.js workers (the JavaScript bridge).

    python examples/node_basic.py

Needs `node` (18+) on PATH; without it the example says so and exits 0. The bridge speaks
MessagePack when the npm package @msgpack/msgpack is installed, JSON otherwise.
"""

import shutil
import sys

import trio

import snakepit_trio as sp


async def main() -> None:
    async with sp.open_pool(sp.NodeAdapter(), size=2) as pool:
        pong = await pool.execute("ping")
        print(
            f"Node {pong['node_version']} over {pool.workers()[0].protocol}: ping {pong['status']}"
        )

        for operation, a, b in (("add", 2, 3), ("power", 2, 10), ("sqrt", 2, 0)):
            reply = await pool.execute("compute", {"operation": operation, "a": a, "b": b})
            print(f"compute {operation}({a}, {b}) = {reply['result']}")

        for kind in ("uniform", "integer", "normal"):
            reply = await pool.execute("random", {"type": kind, "min": 1, "max": 6})
            print(f"random {kind}: {reply['value']}")

        blob = bytes(range(256))
        echoed = await pool.execute("echo", {"blob": blob})
        assert echoed["echoed"]["blob"] == blob
        print("echoed 256 bytes, identical")

        async with pool.stream("ping_stream", {"count": 3, "interval": 0.02}) as chunks:
            async for chunk in chunks:
                print("stream:", chunk["message"])


if __name__ == "__main__":
    if shutil.which("node") is None:
        print("skipped: this example needs Node.js ('node' is not on PATH)")
        sys.exit(0)
    trio.run(main)
