"""The default handler: the built-in commands, ``sleep``, and Snakepit's streaming demos.

Every streaming demo is a generator, so it streams when asked for a stream and returns the list
of its chunks otherwise. Delays are cooperative: a cancelled request stops within ~5 ms.
"""

from __future__ import annotations

import time

from .context import current_context
from .handler import BaseCommandHandler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Any

__all__ = ["GenericCommandHandler", "pause"]

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


def _number(args: dict[str, Any], key: str, default: float) -> float:
    value = args.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"argument {key!r} must be a number, not {type(value).__name__}")
    return value


def _count(args: dict[str, Any], key: str, default: int) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"argument {key!r} must be a non-negative integer")
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
        """Sleep ``seconds``; cooperatively (cancellable) unless ``cooperative`` is false."""
        seconds = _number(args, "seconds", 0.1)
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
        items = args.get("items", args.get("batch_items", ["item1", "item2", "item3"]))
        if not isinstance(items, list):
            raise TypeError("'items' must be a list")
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
        """Walk ``total_rows`` rows (default 1000) in chunks of ``chunk_size`` (default 100)."""
        total_rows = _count(args, "total_rows", 1000)
        chunk_size = max(1, _count(args, "chunk_size", 100))
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
        """Classify log lines from ``lines`` or the file ``path`` (at most ``count`` lines)."""
        lines = args.get("lines")
        path = args.get("path")
        if lines is None and isinstance(path, str):
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        if lines is None:
            lines = list(_SAMPLE_LOG)
        if not isinstance(lines, list):
            raise TypeError("'lines' must be a list of strings")
        count = _count(args, "count", len(lines))
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
        """Pretend to train for ``epochs`` epochs (default 5), ``delay`` seconds each."""
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
