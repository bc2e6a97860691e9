"""A custom command handler: the worker-side code of examples/custom_handler/run.py.

The pool starts each worker as ``python -m snakepit_trio_bridge --handler text_handler:TextHandler``
(``PythonAdapter(handler="text_handler:TextHandler")``). This module runs in the worker only;
it imports snakepit_trio_bridge (small, no trio) and nothing from snakepit_trio.
"""

import asyncio
import hashlib
import os
import re
import time

from snakepit_trio_bridge import BaseCommandHandler, current_context

WORD = re.compile(r"[\w']+")


class TextHandler(BaseCommandHandler):
    """Text commands on top of the built-ins (ping, echo, compute, info)."""

    def __init__(self) -> None:
        # Built once per worker process: state here lives as long as the worker.
        self.vocabulary: dict[str, int] = {}
        super().__init__()

    def _register_commands(self) -> None:
        self.register_command("word_count", self.word_count)
        self.register_command("learn", self.learn)
        self.register_command("tokens", self.tokens)
        self.register_command("digest", self.digest)
        self.register_command("slow_upper", self.slow_upper)
        self.register_command("crunch", self.crunch)

    def word_count(self, args: dict) -> dict:
        """Plain function: the return value is the result."""
        words = WORD.findall(args["text"].lower())
        return {"words": len(words), "distinct": len(set(words)), "pid": os.getpid()}

    def learn(self, args: dict) -> dict:
        """Worker-held state: use it with sessions (affinity) so calls find it again."""
        for word in WORD.findall(args["text"].lower()):
            self.vocabulary[word] = self.vocabulary.get(word, 0) + 1
        top = sorted(self.vocabulary.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        return {"known": len(self.vocabulary), "top": top, "pid": os.getpid()}

    def tokens(self, args: dict):
        """Generator: a streaming command. Each yield is a chunk; return is the final value."""
        count = 0
        try:
            for match in WORD.finditer(args["text"]):
                count += 1
                yield {"token": match.group(), "at": match.start()}
            return {"tokens": count}
        finally:
            # Runs also when the caller leaves the stream early (the generator is closed).
            print(f"tokens: stopped after {count}")  # print() goes to the worker's stderr

    def digest(self, args: dict) -> dict:
        """Bytes in, bytes out: MessagePack carries them as bin, JSON as base64."""
        data: bytes = args["data"]
        return {"sha256": hashlib.sha256(data).digest(), "size": len(data)}

    async def slow_upper(self, args: dict) -> dict:
        """An async handler: runs on the worker's asyncio loop and is cancelled like a task."""
        await asyncio.sleep(args.get("delay", 0.1))
        return {"text": args["text"].upper()}

    def crunch(self, args: dict) -> dict:
        """Long synchronous work should check for cancellation now and then."""
        rounds = 0
        deadline = time.monotonic() + args.get("seconds", 1.0)
        while time.monotonic() < deadline:
            current_context().check_cancelled()  # raises Cancelled once the pool cancels
            time.sleep(0.005)
            rounds += 1
        return {"rounds": rounds}
