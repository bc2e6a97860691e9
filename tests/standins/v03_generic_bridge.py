#!/usr/bin/env python3
"""Stand-in for Snakepit v0.3.0's ``priv/python/generic_bridge.py``: JSON only, no negotiation.

It ignores its arguments. A negotiation frame is handled like any request: it has no
``command``, so it is answered ``{"id": null, "success": true, "result": {"status": "error",
"error": "Unknown command: None", ...}}``, which a negotiating pool must take as "JSON only".
"""

from __future__ import annotations

from _standin_wire import GenericHandler, exit_on_sigterm, serve


def main() -> None:
    exit_on_sigterm()
    serve(GenericHandler("Generic Snakepit Bridge", "1.0.0"), "json")


if __name__ == "__main__":
    main()
