"""A small file adapter in Interlok's shape: consumer -> workflow -> services -> producer.

Each file in ``--in`` is a message; its id is the file name. The workflow runs two
services on it (upper-case the payload, then add one ``X-Processed-By: <node id>`` line)
and the producer writes the result to ``--out`` under the same name; then the input
file is removed. Nothing here depends on the profiler: run it under the agent to see
inside it::

    python -m agent.bootstrap --pointcuts examples/aop.xml examples/fs_adapter.py --in in --out out

Without ``--in`` it makes a demo inbox of ``--demo N`` messages in a temporary folder,
processes them and exits.

Started as several nodes of a failover cluster over the same folders (``python -m
agent.bootstrap --failover ...``), only the master works, and every message is delivered
exactly once even when the master is killed in the middle of one. If the master dies right
after one of these steps, the new master finds, and does:

- workflow started: the input; it processes the message as usual.
- temp file ``.ID.NODE.tmp`` written: that file too; it removes it, then goes on as usual.
- output published with ``os.link``: the output too; it leaves it, only removes the input.
- delivery recorded in the journal: the same, without even reading the output.
- input removed: at most a journal entry; it forgets it.

The in-flight list (``cluster.inflight()``, kept by the ``failover`` plugin from the
workflow's start to its end) tells the new master which message was under way and on which
node, so it finishes that one first and removes that node's temp file. Two rules hold it
all together: the output is published with ``os.link``, which never replaces an existing
file (so no second node, not even an old master waking up from a pause, can write it
again), and the input is removed only once the output exists. Before writing, the workflow
checks ``cluster.is_master()``, and again before it removes the input (a master paused
right after a delivery wakes up no longer master: its successor removes it). The
``delivered`` journal (a replicated cache, see
``cache.get_cache``) is what a producer whose result cannot be looked at (a queue, an HTTP
call) would rely on; here the output folder is a second witness. Message ids must be
unique: a file whose output already exists is taken as delivered.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import cache
import cluster

log = logging.getLogger("fs_adapter")

HEADER = "X-Processed-By"


@dataclass
class AdaptrisMessage:
    unique_id: str
    payload: str
    headers: dict[str, str] = field(default_factory=dict)


class FsConsumer:
    """Lists the files waiting in a folder and reads each one as a message."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def path(self, message_id: str) -> str:
        return os.path.join(self.folder, message_id)

    def poll(self) -> list[str]:
        """The ids (file names) of the waiting messages, in name order; dot files are skipped."""
        with os.scandir(self.folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())

    def receive(self, message_id: str) -> AdaptrisMessage | None:
        """The message, or None if its file has gone meanwhile."""
        try:
            with open(self.path(message_id), encoding="utf-8", newline="") as handle:
                return AdaptrisMessage(unique_id=message_id, payload=handle.read())
        except FileNotFoundError:
            return None

    def acknowledge(self, message: AdaptrisMessage) -> None:
        """The message is delivered: remove its file."""
        try:
            os.remove(self.path(message.unique_id))
        except FileNotFoundError:
            pass


class UpperCaseService:
    def do_service(self, message: AdaptrisMessage) -> None:
        message.payload = message.payload.upper()


class AddHeaderService:
    def __init__(self, node: str) -> None:
        self.node = node

    def do_service(self, message: AdaptrisMessage) -> None:
        if message.payload and not message.payload.endswith("\n"):
            message.payload += "\n"
        message.payload += f"{HEADER}: {self.node}\n"


def still_master(message_id: str) -> None:
    """Raise NotMasterError (the adapter stops; its successor finishes the message) unless
    this node may still act as master."""
    if not cluster.is_master():
        raise cache.NotMasterError(f"{message_id}: no longer the master")


class FsProducer:
    """Publishes each message as a file in a folder: whole, and at most once.

    The content goes to a temporary file of this node's (``.ID.NODE.tmp``; consumers of
    the folder skip dot files), is flushed to disk, and is then published under its final
    name with ``os.link``, right after one more ``cluster.is_master()`` (the flush takes
    milliseconds, long enough for a pause to end mastership): the output appears whole or
    not at all and, unlike with ``os.replace``, an existing output is never replaced. This
    needs a file system with hard links (any local POSIX one, NTFS).
    """

    def __init__(self, folder: str, node: str) -> None:
        self.folder = folder
        self.node = node

    def temp_path(self, message_id: str, node: str) -> str:
        return os.path.join(self.folder, f".{message_id}.{node}.tmp")

    def produce(self, message: AdaptrisMessage) -> bool:
        """Publish ``message``; False if its output was already there (it is left as it was)."""
        final = os.path.join(self.folder, message.unique_id)
        temp = self.temp_path(message.unique_id, self.node)
        with open(temp, "wb") as handle:
            handle.write(message.payload.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        trace("written", message.unique_id)
        try:
            still_master(message.unique_id)  # paused since the workflow's check?
        except cache.NotMasterError:
            os.remove(temp)  # then publish nothing
            raise
        try:
            os.link(temp, final)
            published = True
        except FileExistsError:
            published = False
        trace("linked" if published else "exists", message.unique_id)
        os.remove(temp)
        return published

    def published_by(self, message_id: str) -> str | None:
        """The node named in the message's output, if the output exists ("?" if none is)."""
        try:
            path = os.path.join(self.folder, message_id)
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return None
        last = lines[-1] if lines else ""
        return last[len(HEADER) + 2 :] if last.startswith(f"{HEADER}: ") else "?"

    def discard_temp(self, message_id: str, node: str) -> None:
        """Remove the temp file a (killed) producer on ``node`` may have left for a message."""
        try:
            os.remove(self.temp_path(message_id, node))
            log.info("removed the temp file of %s left by %s", message_id, node)
        except FileNotFoundError:
            pass


class DeliveryJournal:
    """The messages whose output is in place and whose input may not be removed yet.

    One entry per message in the cache ``fs_adapter.delivered``, replicated to the
    slaves under ``--failover``: written once the output exists, deleted once the input
    is gone. Keys are output paths, so adapters writing to other folders never mix.
    """

    def __init__(self, outbox: str) -> None:
        self.outbox = os.path.abspath(outbox)
        self.store = cache.get_cache("fs_adapter.delivered")

    def key(self, message_id: str) -> str:
        return os.path.join(self.outbox, message_id)

    def delivered_by(self, message_id: str) -> str | None:
        entry = self.store.get(self.key(message_id))
        return None if entry is None else entry["node"]

    def record(self, message_id: str) -> None:
        """Returns once every live slave has the entry (cache.replication=sync)."""
        entry = {"node": cluster.node_id(), "epoch": cluster.epoch(), "at": time.time()}
        self.store.set(self.key(message_id), entry)

    def forget(self, message_id: str) -> None:
        """Not waited for: if a takeover loses it, recover() forgets the entry again."""
        self.store.delete(self.key(message_id), wait=False)

    def pending(self) -> list[str]:
        """The message ids with an entry (normally none: a crash leaves at most one)."""
        prefix = self.key("")
        return [key[len(prefix) :] for key in self.store.keys() if key.startswith(prefix)]


class StandardWorkflow:
    def __init__(
        self,
        services: list[object],
        producer: FsProducer,
        journal: DeliveryJournal,
        delay_ms: int,
    ) -> None:
        self.services = services
        self.producer = producer
        self.journal = journal
        self.delay = delay_ms / 1000.0

    def on_message(self, message: AdaptrisMessage) -> None:
        message_id = message.unique_id
        trace("begin", message_id)
        done_by = self.journal.delivered_by(message_id) or self.producer.published_by(message_id)
        if done_by:  # delivered before a crash (or the id was sent again): never twice
            self.producer.discard_temp(message_id, self.producer.node)  # ours, before a restart
            trace("skipped", message_id, done_by)
            return
        for service in self.services:
            service.do_service(message)  # type: ignore[attr-defined]
        if self.delay:
            time.sleep(self.delay)
        still_master(message_id)  # e.g. this process was paused and a slave took over
        self.producer.produce(message)
        self.journal.record(message_id)
        trace("recorded", message_id)


class Channel:
    """Consumer, workflow and producer together; what to do with each message id."""

    def __init__(self, inbox: str, outbox: str, errors: str, delay_ms: int) -> None:
        node = cluster.node_id()
        self.consumer = FsConsumer(inbox)
        self.producer = FsProducer(outbox, node)
        self.journal = DeliveryJournal(outbox)
        self.workflow = StandardWorkflow(
            [UpperCaseService(), AddHeaderService(node)], self.producer, self.journal, delay_ms
        )
        self.errors = errors
        self.processed = 0

    def recover(self) -> None:
        """Finish what the previous master was doing when it went (nothing on a first start)."""
        for entry in cluster.inflight():
            message_id, node = entry["message_id"], entry["node"]
            log.info(
                "%s was in flight on %s (epoch %s): finishing it", message_id, node, entry["epoch"]
            )
            trace("inflight", message_id, node)
            self.producer.discard_temp(message_id, node)
            if not self.process(message_id):
                # nothing left to redeliver: drop the entry the failover plugin could not
                cache.get_cache(cache.FAILOVER_CACHE).delete(message_id)
        for message_id in self.journal.pending():
            if not os.path.exists(self.consumer.path(message_id)):
                self.journal.forget(message_id)  # the input went, the entry stayed

    def process(self, message_id: str) -> bool:
        """Deliver one message (unless it was delivered already); False if it has gone."""
        try:
            message = self.consumer.receive(message_id)
            if message is None:
                return False
            self.workflow.on_message(message)
            still_master(message_id)  # paused after the delivery: its successor removes it
            trace("delivered", message_id)
            self.consumer.acknowledge(message)
            trace("removed", message_id)
            self.journal.forget(message_id)
        except cache.NotMasterError:
            raise
        except Exception as exc:
            if not cluster.is_master():
                raise cache.NotMasterError(f"{message_id}: no longer the master") from exc
            self.reject(message_id, exc)
            return True
        self.processed += 1
        return True

    def reject(self, message_id: str, exc: Exception) -> None:
        """A message that cannot be processed goes to the error folder, with its reason logged."""
        log.error(
            "%s failed (%s: %s); moved to %s", message_id, type(exc).__name__, exc, self.errors
        )
        trace("failed", message_id, type(exc).__name__)
        os.makedirs(self.errors, exist_ok=True)
        try:
            os.replace(self.consumer.path(message_id), os.path.join(self.errors, message_id))
        except FileNotFoundError:
            pass


def run(inbox: str, outbox: str, errors: str, delay_ms: int, once: bool, poll_ms: int = 200) -> int:
    """Poll ``inbox`` until the node stops (or once); returns how many messages were delivered."""
    channel = Channel(inbox, outbox, errors, delay_ms)
    wake = threading.Event()
    cluster.on_stop(wake.set)  # under --failover: the node stops or steps down
    trace("start", detail=str(len(cluster.inflight())))
    try:
        channel.recover()
        while not cluster.stopping():
            for message_id in channel.consumer.poll():
                if cluster.stopping() or not cluster.is_master():
                    break
                channel.process(message_id)
            if once:
                break
            wake.wait(poll_ms / 1000.0)
    except cache.NotMasterError as exc:
        log.warning("%s; stopping", exc)  # the node is stepping down: its successor takes over
    return channel.processed


# -- test and demo aids ------------------------------------------------------------------
# --trace FILE appends one line per step of each message to FILE (the nodes of a cluster may
# share it): "MONOTONIC EVENT NODE EPOCH DETAIL MESSAGE-ID". --pause-at STEP:MESSAGE-ID makes
# the first node that reaches STEP for that message stop there until it is killed or the
# marker file it made (TRACE.paused-STEP-MESSAGE-ID) is removed, so that a test can kill or
# freeze it at that very point. Neither changes what the adapter does.

_trace_fd: int | None = None
_trace_file = ""
_pause_at: set[tuple[str, str]] = set()


def trace(event: str, message_id: str = "-", detail: str = "-") -> None:
    if _trace_fd is None:
        return
    fields = f"{time.monotonic():.6f} {event} {cluster.node_id()} {cluster.epoch()} {detail}"
    os.write(_trace_fd, f"{fields} {message_id}\n".encode())
    if (event, message_id) in _pause_at:
        marker = f"{_trace_file}.paused-{event}-{message_id}"
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return  # another node paused here already
        trace("paused", message_id, event)
        while os.path.exists(marker):  # until killed, or let go by removing the marker
            time.sleep(0.01)


def start_tracing(path: str, pause_at: list[str]) -> None:
    global _trace_fd, _trace_file
    _trace_file = os.path.abspath(path)
    _trace_fd = os.open(_trace_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for item in pause_at:
        step, _, message_id = item.partition(":")
        _pause_at.add((step, message_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="inbox", help="folder to poll for messages")
    parser.add_argument("--out", dest="outbox", help="folder for processed messages")
    parser.add_argument("--error", help="folder for messages that failed (default: OUT.failed)")
    parser.add_argument("--delay-ms", type=int, default=0, help="slow each message down")
    parser.add_argument("--poll-ms", type=int, default=200, help="pause between polls")
    parser.add_argument("--once", action="store_true", help="process what is there, then exit")
    parser.add_argument("--demo", type=int, default=200, help="demo messages without --in")
    aids = parser.add_argument_group("test and demo aids")
    aids.add_argument("--trace", metavar="FILE", help="append each step of each message to FILE")
    aids.add_argument(
        "--pause-at",
        action="append",
        default=[],
        metavar="STEP:MESSAGE",
        help="the first node to reach STEP (written, linked, recorded...) for MESSAGE stops there",
    )
    options = parser.parse_args(argv)
    # this adapter's lines, and the replicated cache's (slaves joining, live, dropped)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s [%(name)s] %(message)s"))
    for name in ("fs_adapter", "cache"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if options.trace:
        start_tracing(options.trace, options.pause_at)
    if options.inbox:
        outbox = options.outbox or options.inbox.rstrip("/\\") + ".out"
        errors = options.error or outbox.rstrip("/\\") + ".failed"
        os.makedirs(outbox, exist_ok=True)
        if os.path.samefile(options.inbox, outbox):
            parser.error("--in and --out must be different folders")
        log.info("node %s: polling %s, delivering to %s", cluster.node_id(), options.inbox, outbox)
        done = run(options.inbox, outbox, errors, options.delay_ms, options.once, options.poll_ms)
        log.info("node %s: stopped after %d messages", cluster.node_id(), done)
        return 0
    with tempfile.TemporaryDirectory(prefix="twinweave-demo-") as root:
        inbox, outbox = os.path.join(root, "in"), os.path.join(root, "out")
        os.makedirs(inbox)
        os.makedirs(outbox)
        for i in range(options.demo):
            with open(os.path.join(inbox, f"msg-{i:05d}.txt"), "w", encoding="utf-8") as handle:
                handle.write(f"hello from message {i}\n")
        done = run(inbox, outbox, os.path.join(root, "failed"), options.delay_ms, once=True)
    print(f"processed {done} messages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
