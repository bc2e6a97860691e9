"""Stateless calls on a pool of Python workers, over MessagePack or JSON.

    python examples/python_basic.py               # negotiate: MessagePack
    python examples/python_basic.py --wire json   # JSON: bytes travel as base64

Any worker may serve any call here; see python_session.py for affinity.
"""

import argparse

import trio

import snakepit_trio as sp


async def main(wire: str) -> None:
    async with sp.open_pool(sp.PythonAdapter(wire=wire), size=2) as pool:
        print(f"2 workers up, speaking {pool.workers()[0].protocol}")

        pong = await pool.execute("ping")
        print("ping:", pong["status"])

        total = await pool.execute("compute", {"operation": "add", "a": 2, "b": 3})
        print("2 + 3 =", total["result"])

        # Twenty calls at once: the pool queues them and hands each to the next free worker.
        squares: dict[int, int] = {}

        async def square(n: int) -> None:
            reply = await pool.execute("compute", {"operation": "power", "a": n, "b": 2})
            squares[n] = reply["result"]

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(square, n)
        assert squares == {n: n * n for n in range(20)}
        print("20 concurrent squares:", [squares[n] for n in range(20)])

        # Bytes come back as bytes, whichever wire is in use.
        blob = bytes(range(256)) * 64
        echoed = await pool.execute("echo", {"blob": blob})
        assert echoed["echoed"]["blob"] == blob
        print(f"echoed {len(blob)} bytes, identical")

        # A command that raises in the worker raises CommandError here.
        try:
            await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
        except sp.CommandError as exc:
            print(f"1 / 0 -> CommandError: {exc.error_type}: {exc.message}")

        # timeout= bounds the whole call; the worker is cancelled and keeps serving.
        try:
            await pool.execute("sleep", {"seconds": 10}, timeout=0.2)
        except sp.WorkerTimeout as exc:
            print("timeout ->", exc)

        stats = pool.stats()
        print(f"requests {stats['requests']}, errors {stats['errors']}, workers {stats['workers']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wire", choices=("auto", "json", "msgpack"), default="auto")
    trio.run(main, parser.parse_args().wire)
