"""One ``consulgw run --workers N`` worker: ``python -m consulgw.commands.worker CHANNEL_FD SUPERVISOR_PID``.

Started only by the supervisor (consulgw/commands/run.py), never by hand. The channel is the worker's end of a Unix
socket pair: its first frame carries the validated settings, the worker's index and the number of workers; the
frames after it are the supervisor's view of Consul (consulgw/discovery/fanout.py).
"""

from __future__ import annotations

import socket
import struct
import sys

import structlog

from consulgw.commands.run import serve, stop_with_parent
from consulgw.logs import configure_logging
from consulgw.settings import GatewaySettings


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the supervisor closed the channel before the worker's settings arrived")
        data += chunk
    return bytes(data)


def read_hello(sock: socket.socket) -> tuple[GatewaySettings, int, int]:
    """The first frame, read before any event loop exists (it says how to log): settings, index, count."""
    import pickle

    (size,) = struct.unpack(">I", _read_exactly(sock, 4))
    item = pickle.loads(_read_exactly(sock, size))  # written by our own supervisor, on a private socket pair
    if not (isinstance(item, tuple) and len(item) == 4 and item[0] == "hello" and isinstance(item[1], GatewaySettings)):
        raise ValueError("the first frame from the supervisor is not its hello")
    return item[1], int(item[2]), int(item[3])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(a.isdigit() for a in argv):
        print("usage: python -m consulgw.commands.worker CHANNEL_FD SUPERVISOR_PID (started by consulgw run)")
        return 2
    stop_with_parent(int(argv[1]))
    channel = socket.socket(fileno=int(argv[0]))
    settings, index, count = read_hello(channel)
    sink = configure_logging(settings.log_format, settings.log_level, buffered=True)
    assert sink is not None
    code = 1
    try:
        code = serve(settings, sink, worker_index=index, worker_count=count, channel=channel)
    except BaseException:  # noqa: BLE001 - the worker's last words, then a plain exit code for the supervisor
        structlog.get_logger("consulgw.worker").exception("worker_failed", worker=index)
    finally:
        sink.drain()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
