"""Drive a pool of workers running a handler of our own (text_handler.py beside this file).

Run it with `python examples/custom_handler/run.py`.
"""

import hashlib
from pathlib import Path

import trio

import snakepit_trio as sp

HERE = Path(__file__).resolve().parent
TEXT = "the quick brown fox jumps over the lazy dog and the dog sleeps"


async def main() -> None:
    # cwd=HERE puts text_handler.py on the worker's import path (python -m adds the cwd).
    adapter = sp.PythonAdapter(handler="text_handler:TextHandler", cwd=HERE)
    async with sp.open_pool(adapter, size=2) as pool:
        print("word_count:", await pool.execute("word_count", {"text": TEXT}))

        # State kept in the worker: the session brings both calls to the same one.
        await pool.execute_in_session("reader", "learn", {"text": TEXT})
        learned = await pool.execute_in_session("reader", "learn", {"text": "the end"})
        print(f"learn: {learned['known']} words known, top {learned['top']}")
        assert learned["top"][0] == ["the", 4]

        async with pool.stream("tokens", {"text": TEXT}) as chunks:
            firsts = []
            async for chunk in chunks:
                firsts.append(chunk["token"])
                if len(firsts) == 4:
                    break  # the worker closes the generator; its finally runs
        print("first tokens:", firsts)

        data = b"\x00\xffsnake" * 1000
        digest = await pool.execute("digest", {"data": data})
        assert digest["sha256"] == hashlib.sha256(data).digest()
        print(f"digest of {digest['size']} bytes matches")

        print("slow_upper:", (await pool.execute("slow_upper", {"text": "async too"}))["text"])

        try:
            await pool.execute("crunch", {"seconds": 30}, timeout=0.2)
        except sp.WorkerTimeout:
            print("crunch: timed out after 0.2 s; the handler saw the cancel and stopped")

        info = await pool.execute("info")
        print("commands:", info["bridge_info"]["supported_commands"])


if __name__ == "__main__":
    trio.run(main)
