"""PoolConfig refuses, up front and by name, every value the pool could not use.

The expectations are written out here field by field (not read from the implementation), and
a test checks that every field of PoolConfig is listed, so a new field must be classified.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import snakepit_trio as sp
from snakepit_trio._config import (
    MAX_FRAME_SIZE,
    MAX_GRACE,
    MAX_POOL_SIZE,
    MAX_SECONDS,
    MIN_FRAME_SIZE,
    validate_size,
)

DAY = 24 * 3600.0

# field: (lowest allowed, whether the lowest itself is allowed, highest allowed, None allowed)
SECONDS: dict[str, tuple[float, bool, float, bool]] = {
    "startup_timeout": (0.0, False, MAX_SECONDS, False),
    "worker_init_timeout": (0.0, False, MAX_SECONDS, False),
    "negotiation_timeout": (0.0, False, MAX_SECONDS, False),
    "command_timeout": (0.0, False, MAX_SECONDS, False),
    "stream_timeout": (0.0, False, MAX_SECONDS, True),
    "queue_timeout": (0.0, True, MAX_SECONDS, False),
    "cancel_grace": (0.0, True, MAX_GRACE, False),
    "shutdown_grace": (0.0, True, MAX_GRACE, False),
    "kill_grace": (0.0, True, MAX_GRACE, False),
    "drain_timeout": (0.0, True, MAX_SECONDS, False),
    "health_check_interval": (0.0, False, MAX_SECONDS, True),
    "health_check_timeout": (0.0, False, MAX_SECONDS, False),
    "heartbeat_interval": (0.0, False, MAX_SECONDS, False),
    "heartbeat_timeout": (0.0, False, MAX_SECONDS, True),
    "max_lifetime": (0.0, False, MAX_SECONDS, True),
    "restart_backoff": (0.0, True, MAX_SECONDS, False),
    "restart_backoff_max": (0.0, True, MAX_SECONDS, False),
    "restart_window": (0.0, False, MAX_SECONDS, False),
    "session_ttl": (0.0, False, MAX_SECONDS, False),
    "session_cleanup_interval": (0.0, False, MAX_SECONDS, False),
}
# field: (lowest, highest, None allowed)
INTS: dict[str, tuple[int, int, bool]] = {
    "max_queue": (0, 2**63 - 1, False),
    "max_in_flight": (1, 2**63 - 1, False),
    "stream_credits": (1, 2**31 - 1, False),
    "stream_window": (1, 2**63 - 1, False),
    "max_requests": (1, 2**63 - 1, True),
    "max_memory": (1, 2**63 - 1, True),
    "max_restarts": (1, 2**63 - 1, False),
    "max_sessions": (1, 2**63 - 1, True),
    "max_containers": (1, 2**63 - 1, False),
    "max_frame_size": (MIN_FRAME_SIZE, 2**32 - 1, False),
    "stderr_tail_bytes": (1, 2**63 - 1, False),
}
OTHER = {"hardened", "affinity"}

# Values of the wrong type for any numeric field.
NOT_NUMBERS = st.sampled_from(
    ["1", b"1", [1], {"a": 1}, object(), 1j, Decimal("1.5"), Fraction(1, 2), True, False]
)


def test_the_limits_are_sane() -> None:
    # The 4-byte big-endian length prefix carries at most 2**32 - 1.
    assert MAX_FRAME_SIZE == 2**32 - 1
    assert 1024 <= MIN_FRAME_SIZE <= 64 * 1024
    # Node's setTimeout fires at once past 2**31 - 1 ms: graces (sent to workers) stay under.
    assert MAX_GRACE * 1000 < 2**31 - 1
    assert MAX_SECONDS >= 30 * DAY
    assert MAX_POOL_SIZE >= 256


def test_every_field_is_classified() -> None:
    names = {f.name for f in attrs.fields(sp.PoolConfig)}
    assert names == set(SECONDS) | set(INTS) | OTHER


def test_the_defaults_are_valid_and_within_the_limits() -> None:
    config = sp.PoolConfig()
    for name, (low, _inclusive, high, _none) in SECONDS.items():
        value = getattr(config, name)
        assert value is None or low <= value <= high, name
    for name, (lowest, highest, _none) in INTS.items():
        value = getattr(config, name)
        assert value is None or lowest <= value <= highest, name


def _raises(kind: type[Exception], name: str, value: Any) -> pytest.ExceptionInfo[Exception]:
    with pytest.raises(kind) as info:
        sp.PoolConfig(**{name: value})
    message = str(info.value)
    assert f"PoolConfig.{name}" in message, message
    return info


# ---------------------------------------------------------------------------- durations


@settings(max_examples=300)
@given(st.sampled_from(sorted(SECONDS)), st.data())
def test_a_duration_in_range_is_accepted(name: str, data: st.DataObject) -> None:
    low, inclusive, high, _none = SECONDS[name]
    value = data.draw(
        st.floats(low, high, exclude_min=not inclusive)
        | st.integers(math.ceil(low) if inclusive else math.floor(low) + 1, int(high))
    )
    assert getattr(sp.PoolConfig(**{name: value}), name) == value


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(SECONDS)),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "below", "above", "huge int", "low"]),
    st.data(),
)
def test_a_duration_out_of_range_is_a_value_error(
    name: str, case: str, data: st.DataObject
) -> None:
    low, inclusive, high, _none = SECONDS[name]
    value: float
    if case == "nan":
        value = math.nan
    elif case == "-nan":
        value = -math.nan
    elif case == "inf":
        value = math.inf
    elif case == "-inf":
        value = -math.inf
    elif case == "below":
        value = data.draw(st.floats(max_value=low, exclude_max=True, allow_infinity=False))
    elif case == "above":
        value = data.draw(st.floats(min_value=high, exclude_min=True, allow_infinity=False))
    elif case == "huge int":
        value = data.draw(st.integers(min_value=int(high) + 1))
    elif inclusive:  # "low": the lowest value itself is fine when inclusive
        sp.PoolConfig(**{name: low})
        return
    else:
        value = low
    message = str(_raises(ValueError, name, value).value)
    assert "finite" in message and str(int(high)) in message  # it names the allowed range


@settings(max_examples=200)
@given(st.sampled_from(sorted(SECONDS)), NOT_NUMBERS)
def test_a_duration_of_another_type_is_a_type_error(name: str, value: Any) -> None:
    _raises(TypeError, name, value)


@pytest.mark.parametrize("name", sorted(SECONDS))
def test_none_is_accepted_only_where_it_disables_a_limit(name: str) -> None:
    if SECONDS[name][3]:
        assert getattr(sp.PoolConfig(**{name: None}), name) is None
    else:
        _raises(TypeError, name, None)


# ---------------------------------------------------------------------------- integers


@settings(max_examples=300)
@given(st.sampled_from(sorted(INTS)), st.data())
def test_an_int_in_range_is_accepted(name: str, data: st.DataObject) -> None:
    lowest, highest, _none = INTS[name]
    value = data.draw(
        st.integers(lowest, highest) | st.sampled_from([lowest, highest]), label="value"
    )
    assert getattr(sp.PoolConfig(**{name: value}), name) == value


@settings(max_examples=300)
@given(st.sampled_from(sorted(INTS)), st.data())
def test_an_int_out_of_range_is_a_value_error(name: str, data: st.DataObject) -> None:
    lowest, highest, _none = INTS[name]
    value = data.draw(st.integers(max_value=lowest - 1) | st.integers(min_value=highest + 1))
    info = _raises(ValueError, name, value)
    assert str(lowest) in str(info.value)


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(INTS)),
    NOT_NUMBERS | st.floats(allow_nan=True, allow_infinity=True) | st.just(8.0),
)
def test_an_int_field_refuses_floats_bools_and_the_rest(name: str, value: Any) -> None:
    _raises(TypeError, name, value)


@pytest.mark.parametrize("name", sorted(INTS))
def test_none_is_an_int_field_only_where_it_disables_a_limit(name: str) -> None:
    if INTS[name][2]:
        assert getattr(sp.PoolConfig(**{name: None}), name) is None
    else:
        _raises(TypeError, name, None)


def test_the_reported_examples() -> None:
    for name, value in (
        ("shutdown_grace", math.inf),
        ("max_frame_size", 2**33),
        ("max_frame_size", 2**32),
        ("max_frame_size", 1),
        ("command_timeout", math.nan),
        ("kill_grace", 1e300),
        ("session_cleanup_interval", 0),
    ):
        with pytest.raises(ValueError, match=rf"PoolConfig\.{name}"):
            sp.PoolConfig(**{name: value})


# ---------------------------------------------------------------------------- the others


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_hardened_is_a_bool(value: Any) -> None:
    _raises(TypeError, "hardened", value)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("any", ValueError),
        ("HINT", ValueError),
        (1, TypeError),
        (None, TypeError),
        (["hint"], TypeError),
    ],
)
def test_affinity_is_one_of_three_words(value: Any, kind: type[Exception]) -> None:
    info = _raises(kind, "affinity", value)
    assert "'hint', 'strict', 'fail'" in str(info.value)


def test_evolve_validates_too() -> None:
    with pytest.raises(ValueError, match=r"PoolConfig\.shutdown_grace"):
        attrs.evolve(sp.PoolConfig(), shutdown_grace=math.inf)


# ---------------------------------------------------------------------------- pool size


@pytest.mark.parametrize("size", [1, 2, MAX_POOL_SIZE])
def test_a_pool_size_in_range_is_accepted(size: int) -> None:
    assert validate_size(size) == size


@pytest.mark.parametrize(
    ("size", "kind"),
    [
        (0, ValueError),
        (-1, ValueError),
        (MAX_POOL_SIZE + 1, ValueError),
        (10**30, ValueError),
        (True, TypeError),
        (2.0, TypeError),
        ("2", TypeError),
        (None, TypeError),
    ],
)
def test_a_bad_pool_size_is_refused_by_name(size: Any, kind: type[Exception]) -> None:
    with pytest.raises(kind, match=rf"size must be an int from 1 to {MAX_POOL_SIZE}"):
        validate_size(size)


# ---------------------------------------------------------------------------- with real pools


_EXTREMES = {
    "highest": sp.PoolConfig(
        **{name: high for name, (_low, _inc, high, _none) in SECONDS.items()},
        **{name: highest for name, (_lowest, highest, _none) in INTS.items()},
    ),
    "lowest": sp.PoolConfig(
        **{name: 0.0 for name, (_low, inclusive, _high, _none) in SECONDS.items() if inclusive},
        max_queue=0,
        stream_credits=1,
        stream_window=1,
        stderr_tail_bytes=1,
        max_frame_size=MIN_FRAME_SIZE,
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("extreme", sorted(_EXTREMES))
async def test_a_pool_runs_at_the_extremes_of_every_range(extreme: str) -> None:
    """What PoolConfig accepts, the pool can use (no internal error at start or close)."""
    async with sp.open_pool(sp.PythonAdapter(), size=1, config=_EXTREMES[extreme]) as pool:
        assert (await pool.execute("ping", timeout=30))["status"] == "ok"
        assert (await pool.execute("echo", {"t": "x" * 1000}, timeout=30))["echoed"]
        async with pool.stream("ping_stream", {"count": 3, "interval": 0}, timeout=30) as chunks:
            assert len([chunk async for chunk in chunks]) == 3
