"""The ceiling: a bare aiosmtpd server whose handler writes each message to a file,
fsyncs it and answers 250.  Nothing a real gateway can do with the same clients is faster.

    python3 -m bench.ceiling PORT FOLDER
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, folder: str):
        self.folder = folder
        self.n = itertools.count()

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.folder, f"{next(self.n)}.eml")
        with open(path, "wb") as fh:
            fh.write(envelope.original_content or envelope.content)
            fh.flush()
            os.fsync(fh.fileno())
        return "250 OK"


async def main(port: int, folder: str) -> None:
    handler = Handler(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=64 * 2**20, decode_data=False, enable_SMTPUTF8=True),
        "127.0.0.1", port)
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
