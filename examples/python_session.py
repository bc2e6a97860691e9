"""Sessions: calls of one session go to the worker that served it last.

    python examples/python_session.py               # MessagePack
    python examples/python_session.py --wire json

The pool also keeps a session store (TTL, data, programs) on the pool side: pool.sessions.
"""

import argparse

import trio

import snakepit_trio as sp


async def user(pool: sp.Pool, name: str, pids: dict[str, set[int]]) -> None:
    for _ in range(4):
        info = await pool.execute_in_session(name, "info")
        pids[name].add(info["system_info"]["pid"])
        await trio.sleep(0.01)


async def main(wire: str) -> None:
    async with sp.open_pool(sp.PythonAdapter(wire=wire), size=3) as pool:
        store = pool.sessions
        # Sessions are created on first use; create one yourself to set its TTL or metadata.
        store.create_session("alice", ttl=600, metadata={"plan": "pro"})

        pids: dict[str, set[int]] = {"alice": set(), "bob": set()}
        async with trio.open_nursery() as nursery:
            for name in pids:
                nursery.start_soon(user, pool, name, pids)
        for name, seen in pids.items():
            print(f"session {name!r}: 4 calls, all on worker pid {sorted(seen)}")
            assert len(seen) == 1

        # The store keeps data and "programs" (anything) per session, and global programs.
        store.store_program("alice", "model", {"weights": [0.1, 0.2]})
        store.store_global_program("tokenizer", {"vocab": 32000})
        store.update_session("alice", lambda s: s.data.update(visits=4))
        alice = store.get_session("alice")
        assert alice is not None
        print("alice:", alice.metadata, alice.data, store.get_program("alice", "model"))
        print("global program:", store.get_global_program("tokenizer"))

        store.delete_session("bob")
        print("sessions:", store.list_sessions(), store.get_stats())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wire", choices=("auto", "json", "msgpack"), default="auto")
    trio.run(main, parser.parse_args().wire)
