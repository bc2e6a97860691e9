"""The pool under asyncio: snakepit-trio is written against anyio, so it runs on both.

    python examples/anyio_asyncio.py

The same code runs under trio with anyio.run(main, backend="trio").
"""

import asyncio

import anyio

import snakepit_trio as sp


async def main() -> None:
    # We are inside an ordinary asyncio event loop.
    print("running on", type(asyncio.get_running_loop()).__name__)
    async with sp.open_pool(sp.PythonAdapter(), size=2) as pool:
        squares: dict[int, int] = {}

        async def square(n: int) -> None:
            reply = await pool.execute("compute", {"operation": "multiply", "a": n, "b": n})
            squares[n] = reply["result"]

        async with anyio.create_task_group() as tg:
            for n in (3, 4, 5):
                tg.start_soon(square, n)
        print("squares from an anyio task group:", squares)

        # asyncio's own tools work too: gather, wait_for, timeouts.
        replies = await asyncio.gather(*(pool.execute("ping") for _ in range(5)))
        print("5 pings via asyncio.gather:", [r["status"] for r in replies])

        try:
            await asyncio.wait_for(pool.execute("sleep", {"seconds": 5}), timeout=0.2)
        except TimeoutError:
            print("asyncio.wait_for cancelled a 5 s sleep after 0.2 s; the worker was told to stop")

        async with pool.stream("ping_stream", {"count": 3, "interval": 0.01}) as chunks:
            print("stream:", [chunk["ping_number"] async for chunk in chunks])
        print("stats:", {k: v for k, v in pool.stats().items() if k in ("requests", "cancelled")})


if __name__ == "__main__":
    anyio.run(main, backend="asyncio")
