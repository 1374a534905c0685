"""The far end of ``replication.py``'s round-trip floor: what a slave must do, and no more.

``python roundtrip_echo.py PORT_FILE REQUEST_BYTES ACK_BYTES [JOURNAL]`` listens on
127.0.0.1 (a port of the kernel's choosing, written to PORT_FILE), takes one connection
and, for every REQUEST_BYTES read from it, answers ACK_BYTES; with JOURNAL, it first
appends what it read to that file in one ``os.write`` (what a slave does to make a change
durable before it acknowledges, see ``cache/journal.py``). It ends when the connection
closes. No decoding, no authentication, no threads: the floor under any replication
protocol written in Python on this machine.
"""

from __future__ import annotations

import os
import socket
import sys


def main(argv: list[str]) -> int:
    port_file, request, ack = argv[0], int(argv[1]), int(argv[2])
    journal = os.open(argv[3], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if argv[3:] else -1
    answer = b"a" * ack
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30.0)
        tmp = port_file + ".tmp"
        with open(tmp, "w", encoding="ascii") as out:
            out.write(str(server.getsockname()[1]))
        os.replace(tmp, port_file)
        conn, _ = server.accept()
    conn.settimeout(None)  # blocking, as a slave's link is
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = b""
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return 0
            pending += data
            while len(pending) >= request:
                record, pending = pending[:request], pending[request:]
                if journal >= 0:
                    os.write(journal, record)
                conn.sendall(answer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
