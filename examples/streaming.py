"""Streaming commands: chunks as an async iterator, a progress line, early exit, a callback.

    python examples/streaming.py

A streaming command is a generator in the worker; each value it yields is one chunk.
"""

import sys

import trio

import snakepit_trio as sp


def show_progress(done: int, total: int, label: str) -> None:
    """A live bar on a terminal; a plain line every third of the way otherwise."""
    if sys.stderr.isatty():
        filled = 30 * done // total
        sys.stderr.write(f"\r[{'#' * filled:<30}] {done}/{total} {label}\x1b[K")
        if done == total:
            sys.stderr.write("\n")
    elif done * 3 // total > (done - 1) * 3 // total:
        sys.stderr.write(f"{done}/{total} done\n")


async def main() -> None:
    async with sp.open_pool(sp.PythonAdapter(), size=2) as pool:
        # 1. Iterate the chunks inside the block; the final value is in chunks.result.
        items = [f"doc-{i}" for i in range(30)]
        async with pool.stream("batch_inference", {"items": items, "delay": 0.02}) as chunks:
            async for chunk in chunks:
                show_progress(chunk["index"] + 1, len(items), chunk["item"])
        print(f"batch_inference: {chunks.count} chunks, final value {chunks.result}")

        # 2. Leave early: the worker is sent a cancel, closes the generator and is free again.
        async with pool.stream(
            "process_large_dataset", {"total_rows": 10**6, "chunk_size": 10}
        ) as chunks:
            async for chunk in chunks:
                if chunk["chunk_number"] == 3:
                    break
        print(f"left process_large_dataset after {chunks.count} of 100000 chunks")

        # 3. timeout= bounds the whole stream.
        try:
            async with pool.stream(
                "ping_stream", {"count": 100, "interval": 0.05}, timeout=0.3
            ) as chunks:
                async for _ in chunks:
                    pass
        except sp.WorkerTimeout:
            print(f"ping_stream timed out after {chunks.count} chunks")

        # 4. The callback form (Snakepit's execute_stream): sync or async callbacks.
        epochs: list[float] = []
        final = await pool.execute_stream(
            "distributed_training", {"epochs": 4}, lambda chunk: epochs.append(chunk["val_acc"])
        )
        print(f"distributed_training: val_acc per epoch {epochs}, final {final['status']!r}")

        print("stats:", {k: pool.stats()[k] for k in ("requests", "cancelled", "timeouts")})


if __name__ == "__main__":
    trio.run(main)
