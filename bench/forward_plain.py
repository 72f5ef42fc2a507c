"""What a user would write instead of ugram's forwarding sink: one process that reads the
socket and publishes each datagram to JetStream with nats-py, every message under its own
``Nats-Msg-Id``.

    python bench/forward_plain.py PATH NATS_URL SUBJECT COUNT MODE

``MODE`` ``pipelined``: ``js.publish_async`` with at most 256 acknowledgements outstanding
(the fastest nats-py gives); ``each``: ``await js.publish()`` per datagram (one round trip
each, the simplest code). It binds PATH, handles COUNT datagrams, waits for every
acknowledgement and exits; it prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import nats

WINDOW = 256


async def main(path: str, url: str, subject: str, count: int, mode: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    tag = f"{os.getpid()}-"
    for seq in range(count):
        data = await loop.sock_recv(sock, 65536)
        headers = {"Nats-Msg-Id": tag + str(seq)}
        if mode == "each":
            await js.publish(subject, data, headers=headers)
        else:
            await js.publish_async(subject, data, headers=headers)
    await js.publish_async_completed()
    await nc.close()
    sock.close()


if __name__ == "__main__":
    path, url, subject, count, mode = sys.argv[1:6]
    asyncio.run(main(path, url, subject, int(count), mode))
