"""snakepit-trio: a pool of long-lived external worker processes for trio and anyio.

async with snakepit_trio.open_pool(snakepit_trio.PythonAdapter()) as pool:
    result = await pool.execute("compute", {"operation": "add", "a": 1, "b": 2})
"""

from ._adapters import Adapter, NodeAdapter, PythonAdapter, Wire, node_bridge_path
from ._config import Affinity, PoolConfig
from ._errors import (
    CommandError,
    PoolClosed,
    PoolSaturated,
    ProtocolError,
    QueueTimeout,
    SessionError,
    SnakepitError,
    StartupError,
    UnsupportedCommand,
    WorkerCrashed,
    WorkerTimeout,
)
from ._grpc import GrpcPythonAdapter
from ._orphans import OrphanInfo, sweep_orphans, sweep_orphans_async
from ._pool import ChunkStream, Pool, open_pool
from ._programs import Program, create_global_program, create_program, execute_program
from ._sessions import Session, SessionStore
from ._slot import WorkerInfo, WorkerState
from ._telemetry import (
    Listener,
    Outcome,
    RejectReason,
    RequestCompleted,
    RequestRejected,
    Telemetry,
    TelemetryEvent,
    WorkerExited,
    WorkerReady,
    WorkerRecycled,
    WorkerStarted,
)
from ._version import __version__

__all__ = [
    "Adapter",
    "Affinity",
    "ChunkStream",
    "CommandError",
    "GrpcPythonAdapter",
    "Listener",
    "NodeAdapter",
    "OrphanInfo",
    "Outcome",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolSaturated",
    "Program",
    "ProtocolError",
    "PythonAdapter",
    "QueueTimeout",
    "RejectReason",
    "RequestCompleted",
    "RequestRejected",
    "Session",
    "SessionError",
    "SessionStore",
    "SnakepitError",
    "StartupError",
    "Telemetry",
    "TelemetryEvent",
    "UnsupportedCommand",
    "Wire",
    "WorkerCrashed",
    "WorkerExited",
    "WorkerInfo",
    "WorkerReady",
    "WorkerRecycled",
    "WorkerStarted",
    "WorkerState",
    "WorkerTimeout",
    "__version__",
    "create_global_program",
    "create_program",
    "execute_program",
    "node_bridge_path",
    "open_pool",
    "sweep_orphans",
    "sweep_orphans_async",
]
