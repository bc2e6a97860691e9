"""The default handler: the built-in commands, ``sleep``, and Snakepit's streaming demos.

Every streaming demo is a generator, so it streams when asked for a stream and returns the list
of its chunks otherwise. Delays are cooperative: a cancelled request stops within ~5 ms.

Whoever can send commands to a worker controls every argument, so the demos work on generated
data or on what the request carries, never on files, the environment or other processes; and
every count, size and delay is bounded (``MAX_ITEMS`` chunks or items, ``MAX_DELAY`` seconds
between chunks, ``MAX_SLEEP`` seconds of ``sleep``), so one request cannot take the worker's
memory or hold it forever. An argument out of bounds raises ``ValueError``.
"""

from __future__ import annotations

import time

from .context import current_context
from .handler import BaseCommandHandler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Any

__all__ = ["MAX_DELAY", "MAX_ITEMS", "MAX_SLEEP", "GenericCommandHandler", "pause"]

#: The most chunks a demo produces, and the most items or lines it takes.
MAX_ITEMS = 100_000
#: The longest ``delay``/``interval`` between two chunks, in seconds.
MAX_DELAY = 60.0
#: The longest ``sleep``, in seconds.
MAX_SLEEP = 3600.0
_TICK = 0.005
_SAMPLE_LOG = (
    "INFO: Application started",
    "DEBUG: Processing request",
    "ERROR: Database connection failed",
    "WARN: High memory usage detected",
    "INFO: Request completed",
)


def pause(seconds: float) -> None:
    """Sleep ``seconds``, checking every ~5 ms whether the current request was cancelled."""
    ctx = current_context()
    deadline = time.monotonic() + seconds
    while True:
        ctx.check_cancelled()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(_TICK, left))


def _number(args: dict[str, Any], key: str, default: float, maximum: float = MAX_DELAY) -> float:
    """A number of seconds between 0 and ``maximum`` (NaN and infinities refused)."""
    value = args.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"argument {key!r} must be a number, not {type(value).__name__}")
    if not 0 <= value <= maximum:  # NaN fails this too
        raise ValueError(f"argument {key!r} must be between 0 and {maximum:g}, not {value!r}")
    return value


def _count(args: dict[str, Any], key: str, default: int, maximum: int = MAX_ITEMS) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"argument {key!r} must be an integer between 0 and {maximum}")
    return value


def _list(args: dict[str, Any], key: str, default: list[Any]) -> list[Any]:
    value = args.get(key, default)
    if not isinstance(value, list):
        raise TypeError(f"argument {key!r} must be a list, not {type(value).__name__}")
    if len(value) > MAX_ITEMS:
        raise ValueError(f"argument {key!r} has {len(value)} items, over {MAX_ITEMS}")
    return value


def _severity(line: str) -> str:
    upper = line.upper()
    for level in ("ERROR", "WARN", "DEBUG"):
        if level in upper:
            return level
    return "INFO"


class GenericCommandHandler(BaseCommandHandler):
    """Built-ins plus ``sleep`` and the streaming demos of Snakepit v0.3."""

    bridge_type = "generic"

    def _register_commands(self) -> None:
        self.register_command("sleep", self.handle_sleep)
        self.register_command("ping_stream", self.handle_ping_stream)
        self.register_command("batch_inference", self.handle_batch_inference)
        self.register_command("process_large_dataset", self.handle_process_large_dataset)
        self.register_command("tail_and_analyze", self.handle_tail_and_analyze)
        self.register_command("distributed_training", self.handle_distributed_training)

    def handle_sleep(self, args: dict[str, Any]) -> dict[str, Any]:
        """Sleep ``seconds`` (at most ``MAX_SLEEP``); cooperatively (cancellable) unless
        ``cooperative`` is false (then only the pool's cancel ladder ends it early)."""
        seconds = _number(args, "seconds", 0.1, MAX_SLEEP)
        started = time.monotonic()
        if args.get("cooperative", True):
            pause(seconds)
        else:
            time.sleep(seconds)
        return {"status": "ok", "slept": time.monotonic() - started}

    def handle_ping_stream(
        self, args: dict[str, Any]
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """``count`` pings (default 5), ``interval`` seconds apart (default 0.1)."""
        count = _count(args, "count", 5)
        interval = _number(args, "interval", 0.1)
        for i in range(count):
            if i and interval:
                pause(interval)
            yield {
                "ping_number": i + 1,
                "message": f"Ping {i + 1} of {count}",
                "timestamp": time.time(),
            }
        return {"status": "ok", "total": count}

    def handle_batch_inference(
        self, args: dict[str, Any]
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """One made-up prediction per item of ``items`` (or ``batch_items``), ``delay`` apart."""
        key = "items" if "items" in args or "batch_items" not in args else "batch_items"
        items = _list(args, key, ["item1", "item2", "item3"])
        delay = _number(args, "delay", 0.0)
        total = len(items)
        for i, item in enumerate(items):
            if delay:
                pause(delay)
            yield {
                "item": item,
                "index": i,
                "prediction": f"class_{i % 3}",
                "confidence": round(0.85 + 0.05 * (i % 3), 2),
                "progress": (i + 1) / total,
                "processed_at": time.time(),
            }
        return {"status": "ok", "total_items": total}

    def handle_process_large_dataset(
        self, args: dict[str, Any]
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """Walk ``total_rows`` rows (default 1000) in chunks of ``chunk_size`` (default 100).

        The rows are only counted (no data is made); at most ``MAX_ITEMS`` chunks.
        """
        total_rows = _count(args, "total_rows", 1000, maximum=1 << 62)
        chunk_size = max(1, _count(args, "chunk_size", 100, maximum=1 << 62))
        if -(-total_rows // chunk_size) > MAX_ITEMS:
            raise ValueError(
                f"{total_rows} rows in chunks of {chunk_size} make more than {MAX_ITEMS} chunks"
            )
        delay = _number(args, "delay", 0.0)
        processed = 0
        chunk_number = 0
        while processed < total_rows:
            if delay:
                pause(delay)
            size = min(chunk_size, total_rows - processed)
            processed += size
            chunk_number += 1
            yield {
                "chunk_number": chunk_number,
                "chunk_size": size,
                "processed_rows": processed,
                "total_rows": total_rows,
                "progress_percent": round(100.0 * processed / total_rows, 1),
            }
        return {"status": "ok", "total_rows": total_rows, "chunks": chunk_number}

    def handle_tail_and_analyze(
        self, args: dict[str, Any]
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """Classify the log lines ``lines`` (default: ``count`` generated sample lines).

        It never reads a file: a ``path`` argument (Snakepit v0.3 read any file it named, for
        whoever asked) is refused with ``ValueError``.
        """
        if "path" in args:
            raise ValueError(
                "tail_and_analyze does not read files: a caller must not choose what the "
                "worker reads. Pass the log lines themselves as 'lines' (a list of strings)"
            )
        if "lines" in args:
            lines = _list(args, "lines", [])
            count = _count(args, "count", len(lines))
        else:
            count = _count(args, "count", len(_SAMPLE_LOG))
            lines = [_SAMPLE_LOG[i % len(_SAMPLE_LOG)] for i in range(count)]
        delay = _number(args, "delay", 0.0)
        counts: dict[str, int] = {}
        for number, line in enumerate(lines[:count], 1):
            if delay:
                pause(delay)
            text = str(line)
            severity = _severity(text)
            counts[severity] = counts.get(severity, 0) + 1
            yield {
                "entry_number": number,
                "log_entry": text,
                "severity": severity,
                "length": len(text),
                "word_count": len(text.split()),
                "timestamp": time.time(),
            }
        return {"status": "ok", "lines": sum(counts.values()), "severity_counts": counts}

    def handle_distributed_training(
        self, args: dict[str, Any]
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """Pretend to train for ``epochs`` epochs (default 5), ``delay`` seconds each.

        ``final_model_path`` is made up, as in Snakepit v0.3: nothing is written.
        """
        epochs = _count(args, "epochs", 5)
        delay = _number(args, "delay", 0.0)
        val_acc = 0.0
        for epoch in range(1, epochs + 1):
            if delay:
                pause(delay)
            val_acc = round(0.95 - 0.45 / epoch, 4)
            yield {
                "epoch": epoch,
                "total_epochs": epochs,
                "train_loss": round(1.0 / epoch, 4),
                "val_loss": round(1.1 / epoch, 4),
                "val_acc": val_acc,
                "progress": epoch / epochs,
            }
        return {
            "status": "completed",
            "epochs": epochs,
            "final_val_acc": val_acc,
            "final_model_path": f"/tmp/snakepit_models/model_epoch_{epochs}.pt",
        }
