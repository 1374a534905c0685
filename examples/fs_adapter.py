"""A small file adapter in Interlok's shape: consumer -> workflow -> services -> producer.

Each file in ``--in`` is a message (its id is the file name). The workflow runs
two services on it (upper-case the payload, add a processed-by header line) and
the producer writes the result atomically to ``--out`` under the same name, then
the input file is removed. Nothing here knows about twinweave: run it under the
agent to see inside it::

    python -m agent.bootstrap --pointcuts examples/aop.xml examples/fs_adapter.py --in in --out out

Without ``--in`` it makes a demo inbox of ``--demo N`` messages in a temporary
folder, processes them and exits.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class AdaptrisMessage:
    unique_id: str
    payload: str
    headers: dict[str, str] = field(default_factory=dict)


class FsConsumer:
    """Polls a folder and hands each file to the workflow as a message."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def poll(self) -> Iterator[AdaptrisMessage]:
        for name in sorted(os.listdir(self.folder)):
            path = os.path.join(self.folder, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as handle:
                yield AdaptrisMessage(unique_id=name, payload=handle.read())


class UpperCaseService:
    def do_service(self, message: AdaptrisMessage) -> None:
        message.payload = message.payload.upper()


class AddHeaderService:
    def __init__(self, node: str) -> None:
        self.node = node

    def do_service(self, message: AdaptrisMessage) -> None:
        if not message.payload.endswith("\n"):
            message.payload += "\n"
        message.payload += f"X-Processed-By: {self.node}\n"


class FsProducer:
    """Writes a message to the output folder atomically (temp file + rename)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def produce(self, message: AdaptrisMessage) -> None:
        final = os.path.join(self.folder, message.unique_id)
        temp = os.path.join(self.folder, f".{message.unique_id}.tmp")
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(message.payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)


class StandardWorkflow:
    def __init__(self, services: list[object], producer: FsProducer, delay_ms: int) -> None:
        self.services = services
        self.producer = producer
        self.delay = delay_ms / 1000.0

    def on_message(self, message: AdaptrisMessage) -> None:
        for service in self.services:
            service.do_service(message)  # type: ignore[attr-defined]
        if self.delay:
            time.sleep(self.delay)
        self.producer.produce(message)


def run(inbox: str, outbox: str, delay_ms: int, once: bool, poll_ms: int = 200) -> int:
    node = os.environ.get("TWINWEAVE_NODE_ID", socket.gethostname())
    consumer = FsConsumer(inbox)
    workflow = StandardWorkflow(
        [UpperCaseService(), AddHeaderService(node)], FsProducer(outbox), delay_ms
    )
    done = 0
    while True:
        for message in consumer.poll():
            workflow.on_message(message)
            os.remove(os.path.join(inbox, message.unique_id))
            done += 1
        if once:
            return done
        time.sleep(poll_ms / 1000.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="inbox", help="folder to poll for messages")
    parser.add_argument("--out", dest="outbox", help="folder for processed messages")
    parser.add_argument("--delay-ms", type=int, default=0, help="slow each message down")
    parser.add_argument("--once", action="store_true", help="process what is there, then exit")
    parser.add_argument("--demo", type=int, default=200, help="demo messages without --in")
    options = parser.parse_args(argv)
    if options.inbox:
        outbox = options.outbox or options.inbox + ".out"
        os.makedirs(outbox, exist_ok=True)
        run(options.inbox, outbox, options.delay_ms, options.once)
        return 0
    with tempfile.TemporaryDirectory(prefix="twinweave-demo-") as root:
        inbox, outbox = os.path.join(root, "in"), os.path.join(root, "out")
        os.makedirs(inbox)
        os.makedirs(outbox)
        for i in range(options.demo):
            with open(os.path.join(inbox, f"msg-{i:05d}.txt"), "w", encoding="utf-8") as handle:
                handle.write(f"hello from message {i}\n")
        done = run(inbox, outbox, options.delay_ms, once=True)
    print(f"processed {done} messages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
