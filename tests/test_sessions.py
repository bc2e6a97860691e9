"""SessionStore semantics, on a fake clock and on trio's MockClock inside a pool."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import snakepit_trio as sp


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_store(**kwargs: object) -> tuple[sp.SessionStore, FakeClock]:
    clock = FakeClock()
    return sp.SessionStore(clock=clock, **kwargs), clock  # type: ignore[arg-type]


def test_create_get_touch_and_expire() -> None:
    store, clock = make_store(default_ttl=10)
    session = store.create_session("a")
    assert store.session_exists("a")
    clock.now += 9
    assert store.get_session("a") is session  # touched: expiry moves to now + 10
    clock.now += 9
    assert store.session_exists("a")
    clock.now += 10.5
    assert not store.session_exists("a")
    assert store.get_session("a") is None
    assert store.get_stats()["expired"] == 1


def test_create_existing_returns_it_and_custom_ttl() -> None:
    store, clock = make_store(default_ttl=100)
    first = store.create_session("a", ttl=1, metadata={"user": "x"})
    assert store.create_session("a") is first
    assert first.metadata == {"user": "x"}
    clock.now += 2
    assert not store.session_exists("a")


def test_update_delete_and_list() -> None:
    store, _ = make_store()
    store.create_session("a")
    store.create_session("b")

    def mutate(session: sp.Session) -> None:
        session.data["count"] = session.data.get("count", 0) + 1

    store.update_session("a", mutate)
    store.update_session("a", mutate)
    got = store.get_session("a")
    assert got is not None and got.data == {"count": 2}
    assert sorted(store.list_sessions()) == ["a", "b"]
    assert store.delete_session("b") is True
    assert store.delete_session("b") is False
    assert store.list_sessions() == ["a"]
    with pytest.raises(sp.SessionError):
        store.update_session("missing", mutate)


def test_programs_and_global_programs() -> None:
    store, clock = make_store(default_ttl=100)
    store.create_session("a")
    store.store_program("a", "p1", {"code": "x"})
    assert store.get_program("a", "p1") == {"code": "x"}
    assert store.get_program("a", "nope") is None
    assert store.get_program("nobody", "p1") is None
    with pytest.raises(sp.SessionError):
        store.store_program("nobody", "p1", 1)
    store.store_global_program("g", "shared", ttl=5)
    store.store_global_program("forever", "kept")
    assert store.get_global_program("g") == "shared"
    clock.now += 6
    assert store.get_global_program("g") is None
    assert store.get_global_program("forever") == "kept"
    stats = store.get_stats()
    assert stats["programs"] == 1
    assert stats["global_programs"] == 1


def test_cleanup_and_quota() -> None:
    store, clock = make_store(default_ttl=10, max_sessions=2)
    store.create_session("a")
    store.create_session("b")
    with pytest.raises(sp.SessionError, match="quota"):
        store.create_session("c")
    clock.now += 11
    store.create_session("c")  # the quota counts live sessions: expired ones were cleaned
    assert store.cleanup_expired_sessions() == 0
    assert store.list_sessions() == ["c"]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "semi;colon", "new\nline", 42, None])
def test_session_ids_are_validated(bad: object) -> None:
    store, _ = make_store()
    with pytest.raises(sp.SessionError):
        store.create_session(bad)  # type: ignore[arg-type]


def test_pool_sessions_expire_on_the_event_loop_clock() -> None:
    """Inside a pool, TTLs run on trio's clock: a MockClock drives expiry and cleanup."""
    seen: dict[str, object] = {}

    async def main() -> None:
        slow = 1e6  # real-time bounds, in virtual seconds
        config = sp.PoolConfig(
            session_ttl=60,
            session_cleanup_interval=30,
            startup_timeout=slow,
            worker_init_timeout=slow,
            negotiation_timeout=slow,
            command_timeout=slow,
            health_check_interval=None,
        )
        async with sp.open_pool(sp.PythonAdapter(), size=1, config=config) as pool:
            await pool.execute_in_session("s", "ping")
            seen["before"] = pool.sessions.list_sessions()
            await trio.sleep(45)
            seen["touched"] = pool.sessions.session_exists("s")
            await trio.sleep(95)  # past the TTL and a cleanup tick
            seen["after"] = pool.sessions.get_stats()

    # A clock that runs 1000x faster than real time: worker start-up stays real, the TTL
    # and the cleanup interval pass in a fraction of a second.
    trio.run(main, clock=trio.testing.MockClock(rate=1000))
    assert seen["before"] == ["s"]
    assert seen["touched"] is True
    after = seen["after"]
    assert isinstance(after, dict)
    assert after["sessions"] == 0 and after["expired"] == 1
