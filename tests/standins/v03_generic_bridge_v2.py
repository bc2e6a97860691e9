#!/usr/bin/env python3
"""Stand-in for Snakepit v0.3.0's ``priv/python/generic_bridge_v2.py``.

``--mode pool-worker [--protocol json|msgpack|auto]``. Without ``--protocol`` (or with ``auto``)
it expects a JSON ``protocol_negotiation`` frame first and answers ``protocol_selected`` with
only ``type``, ``protocol`` and ``timestamp`` (no features); a first frame of any other kind is
swallowed and the bridge continues in JSON. With an explicit protocol it negotiates nothing, so
a negotiation frame sent to it would be taken for a request. See ``_standin_wire`` for the rest.
"""

from __future__ import annotations

import argparse

from _standin_wire import GenericHandler, exit_on_sigterm, negotiate, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", default="pool-worker", choices=["pool-worker"])
    parser.add_argument("--protocol", default="auto", choices=["auto", "json", "msgpack"])
    options = parser.parse_args()
    exit_on_sigterm()
    protocol = negotiate(options.protocol) if options.protocol == "auto" else options.protocol
    serve(GenericHandler("Generic Snakepit Bridge", "2.0.0"), protocol)


if __name__ == "__main__":
    main()
