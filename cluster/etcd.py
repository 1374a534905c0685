"""The etcd backend: election, fencing and peers on an etcd cluster (``failover.backend=etcd``).

For clouds and Kubernetes, where multicast does not pass. The node's role stands on etcd's
own guarantees (a linearizable store replicated by raft) rather than on our protocol:

* **Lease.** Every node holds one lease of TTL ``delay * retries`` (whole seconds, as etcd
  counts them, and at least what the server grants), renewed every ``delay``.
* **Peers.** Each node keeps ``PREFIX/CLUSTER/nodes/NODE`` (JSON: role, epoch, priority,
  replication host and port, replicated-state position) under its lease, so a dead node's
  record goes with its lease.
* **Claim.** The leader key ``PREFIX/CLUSTER/leader`` is written in one transaction that
  succeeds only if the key does not exist, bound to the claimant's lease. The winner's
  epoch is etcd's revision of that write: monotonic across the cluster, a fencing token the
  replicated cache checks as it checks multicast epochs.
* **Watch.** Slaves read the leader key and watch it from the revision they read; when it
  goes (the lease expired after a kill -9, or a resigning master revoked its lease), they
  stand in rank order: the most up-to-date replicated state first, the others a fraction of
  a delay later each, so the first to claim holds every acknowledged write.
* **Self-fencing.** The master may act only until the start of its last successful renewal
  plus the TTL, less a guard: measured on its own monotonic clock, that moment comes before
  the server can expire the lease, so a master cut off from the etcd majority stops acting
  (and steps down with exit 75) before anyone else can be promoted. A master paused past
  the TTL finds on waking that the moment passed, and steps down before doing any work.
* **Resign.** Revoking the lease deletes the leader key and the node record in one step.

The client is ``etcd3gw`` (extra ``[etcd]``), which speaks etcd's HTTP/JSON gateway: no
gRPC or protobuf build, a small dependency tree, and maintained by OpenStack, who run it
for the same job (tooz). What it lacks is added here, small: several endpoints (tried in
turn), a default timeout on every request, and user/password authentication (the
gateway's ``auth/authenticate``).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from cluster.backend import Backend, BackendError, Listener, PeerView
from cluster.config import Settings
from cluster.election import State, rank_key

log = logging.getLogger("cluster")

T = TypeVar("T")

#: the share of a delay that each rank waits after the one before it
RANK_STEP = 0.5
#: the share of the TTL kept as a guard between "stop acting" and the server's expiry
GUARD_SHARE = 0.2


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace")


def _require_client() -> Any:
    try:
        import etcd3gw
        import requests  # noqa: F401
    except ImportError:
        raise BackendError(
            'failover.backend=etcd needs the etcd client: pip install "twinweave[etcd]"'
        ) from None
    import etcd3gw

    return etcd3gw


class EtcdUnavailable(BackendError):
    """No endpoint of ``failover.etcd.endpoints`` answered."""


class EtcdRefused(BackendError):
    """etcd answered with an error (bad credentials, a lease it no longer has...)."""


def lease_ttl(settings: Settings) -> int:
    """The TTL to ask for: ``delay * retries`` in whole seconds (at least 1)."""
    return max(1, math.ceil(settings.delay_ms * settings.retries / 1000))


class Endpoints:
    """One etcd3gw client per endpoint; a call goes to the one that answered last, then on.

    Every request has a timeout (``timeout`` seconds, also for a watch's connection), and
    with ``failover.etcd.username`` each client authenticates once and again when its token
    is refused.
    """

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.etcd3gw = _require_client()
        self.settings = settings
        self.timeout = timeout
        self._clients: list[Any] = [None] * len(settings.etcd_endpoints)
        self._current = 0
        self.requests = 0  # requests made (traffic figures)
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _client(self, index: int) -> Any:
        made = self._clients[index]
        if made is None:
            made = self._clients[index] = self._make(self.settings.etcd_endpoints[index])
        return made

    def _make(self, url: str) -> Any:
        s = self.settings
        protocol, _, rest = url.partition("://")
        host, _, port = rest.rpartition(":")
        client = self.etcd3gw.client(
            host=host.strip("[]"),
            port=int(port),
            protocol=protocol,
            ca_cert=s.etcd_ca,
            cert_key=s.etcd_key,
            cert_cert=s.etcd_cert,
            timeout=self.timeout,
            api_path="/v3/",  # etcd 3.4 and newer; saves a /version request per client
        )
        adapter = _timeout_adapter_class()(self.timeout)
        client.session.mount("http://", adapter)
        client.session.mount("https://", adapter)
        if s.etcd_username:
            self._authenticate(client)
        return client

    def _authenticate(self, client: Any) -> None:
        answer = client.post(
            client.get_url("/auth/authenticate"),
            json={"name": self.settings.etcd_username, "password": self.settings.etcd_password},
        )
        client.session.headers["Authorization"] = answer["token"]

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` on the first endpoint that answers; :class:`EtcdUnavailable` if none."""
        exceptions = self.etcd3gw.exceptions
        import requests

        tried: list[str] = []
        with self._lock:
            start = self._current
        count = len(self._clients)
        for step in range(count):
            index = (start + step) % count
            url = self.settings.etcd_endpoints[index]
            try:
                self.requests += 1
                client = self._client(index)
                try:
                    result = fn(client)
                except exceptions.WatchTimedOut:
                    raise
                except exceptions.Etcd3Exception as exc:
                    if not (self.settings.etcd_username and "token" in _short(exc).lower()):
                        raise
                    self._authenticate(client)  # the token expired: once more
                    self.requests += 1
                    result = fn(client)
            except (
                exceptions.ConnectionFailedError,
                exceptions.ConnectionTimeoutError,
                exceptions.InternalServerError,
                requests.exceptions.RequestException,
                OSError,
            ) as exc:
                self.failures[type(exc).__name__] += 1
                tried.append(f"{url} ({_short(exc)})")
                self._clients[index] = None  # a new session next time
                continue
            except exceptions.WatchTimedOut:
                raise
            except exceptions.Etcd3Exception as exc:  # etcd answered, and said no
                self.failures["refused"] += 1
                raise EtcdRefused(f"{what}: etcd at {url} refused: {_short(exc)}") from None
            with self._lock:
                self._current = index
            return result
        raise EtcdUnavailable(f"{what}: no etcd endpoint answered: " + "; ".join(tried))

    def close(self) -> None:
        for client in self._clients:
            if client is not None:
                try:
                    client.session.close()
                except Exception:  # closing is best effort
                    pass
        self._clients = [None] * len(self._clients)


def _short(exc: BaseException) -> str:
    text = getattr(exc, "detail_text", None) or str(exc) or type(exc).__name__
    try:  # the gateway's error body: {"error": "etcdserver: ...", "code": N}
        text = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        pass
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "timed out"
    return text[:120]


@functools.cache
def _timeout_adapter_class() -> type:
    """An HTTPAdapter with a default timeout (made on first use: requests is an extra)."""
    import requests.adapters

    class TimeoutAdapter(requests.adapters.HTTPAdapter):
        """A default timeout for requests that give none (the library's watch stream)."""

        def __init__(self, timeout: float) -> None:
            super().__init__(max_retries=0)
            self._timeout = timeout

        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = self._timeout
            return super().send(request, **kwargs)

    return TimeoutAdapter


class Keys:
    """The keys of one cluster under the prefix."""

    def __init__(self, prefix: str, cluster: str) -> None:
        base = prefix.rstrip("/") + "/" + cluster
        self.leader = base + "/leader"
        self.nodes = base + "/nodes/"

    def node(self, node_id: str) -> str:
        return self.nodes + node_id


def _range(key: str, prefix: bool = False) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        end = bytearray(key.encode("utf-8"))
        end[-1] += 1
        request["range_end"] = base64.b64encode(bytes(end)).decode("ascii")
    return {"request_range": request}


def read_cluster(client: Any, keys: Keys) -> tuple[int, dict | None, list[dict]]:
    """(revision, leader or None, node records) read in one transaction (one snapshot)."""
    answer = client.transaction(
        {"compare": [], "success": [_range(keys.leader), _range(keys.nodes, True)], "failure": []}
    )
    revision = int(answer["header"]["revision"])
    responses = answer.get("responses", [])
    leader = None
    nodes: list[dict] = []
    if responses:
        kvs = responses[0].get("response_range", {}).get("kvs", [])
        if kvs:
            leader = _decode_record(kvs[0])
    if len(responses) > 1:
        for kv in responses[1].get("response_range", {}).get("kvs", []):
            record = _decode_record(kv)
            if record is not None:
                nodes.append(record)
    return revision, leader, nodes


def _decode_record(kv: dict) -> dict | None:
    """A leader or node record from a key-value, with ``create_revision`` and ``lease``."""
    try:
        record = json.loads(_unb64(kv.get("value", "")))
    except (ValueError, TypeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("node"), str):
        return None
    record["create_revision"] = int(kv.get("create_revision", 0))
    record["lease"] = int(kv.get("lease", 0))
    return record


class EtcdBackend(Backend):
    name = "etcd"

    def __init__(self, settings: Settings, node_id: str, epoch: int) -> None:
        super().__init__(settings, node_id, epoch)
        self.keys = Keys(settings.etcd_prefix, settings.cluster)
        self.ttl = lease_ttl(settings)
        self.delay = settings.delay_s
        timeout = max(0.25, min(self.delay, self.ttl / 3))
        self.etcd = Endpoints(settings, timeout)
        self._listener: Listener | None = None
        self._state = State.JOINING
        self._epoch = epoch
        self._known_epoch = epoch
        self._master: str | None = None
        self._lease_id = 0
        self._granted = self.ttl
        self._acting_until = 0.0  # master: stop acting at this monotonic moment
        self._next_renewal = 0.0
        self._renewed_at = 0.0  # the start of the last successful renewal (or the grant)
        self._position: tuple[int, int] = (0, 0)
        self._published: dict | None = None
        self._peers: list[dict] = []
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._resigned = False
        self._lock = threading.Lock()

    # -- the seam ---------------------------------------------------------------------------

    def start(self, listener: Listener) -> None:
        s = self.settings
        self._listener = listener
        log.info(
            "Node %s of cluster %s: etcd %s under %s, lease %d s renewed every %d ms, priority %d",
            self.node_id,
            s.cluster,
            ",".join(s.etcd_endpoints),
            self.keys.leader.rsplit("/", 1)[0],
            self.ttl,
            s.delay_ms,
            s.priority,
        )
        try:
            self._grant()
            self._publish(force=True)
        except BackendError as exc:
            self.etcd.close()
            raise EtcdUnavailable(
                f"failover.etcd.endpoints={','.join(s.etcd_endpoints)}: {exc}"
            ) from None
        self._thread = threading.Thread(target=self._run, name="twinweave-etcd", daemon=True)
        self._thread.start()

    def resign(self, wait: bool = True) -> None:
        with self._lock:
            if self._resigned:
                return
            self._resigned = True
            was_master = self._state is State.MASTER
            self._state = State.STOPPED
            self._acting_until = 0.0
            lease = self._lease_id
        self._closing.set()
        if not lease:
            return

        def revoke() -> None:
            try:
                # a fresh client: the loop thread may be using the others right now
                fresh = Endpoints(self.settings, self.etcd.timeout)
                try:
                    fresh.call("revoking the lease", lambda c: _revoke(c, lease))
                finally:
                    fresh.close()
            except BackendError as exc:
                log.warning("could not revoke the lease (it expires by itself): %s", exc)
                return
            if was_master:
                log.info("Resigned as master (epoch %d)", self._epoch)

        if wait:
            revoke()
        else:
            threading.Thread(target=revoke, name="twinweave-etcd-resign", daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0 + self.etcd.timeout * len(self.settings.etcd_endpoints))
        self.etcd.close()

    def is_master(self, now: float) -> bool:
        return self._state is State.MASTER and now < self._acting_until

    def set_position(self, position: tuple[int, int]) -> None:
        self._position = position

    def master_gone(self, host: str, port: int, epoch: int, closed_at: float | None) -> None:
        """A dead master's lease is revoked at once, so that its key goes now, not at expiry.

        Only when the leader key still names that master at that epoch and address: the
        refused connection proves that no process serves there, and a lease whose holder
        is dead protects nothing. A master that is alive but unreachable (host or network
        gone) refuses nothing, and its lease runs out as usual.
        """
        if self._state is not State.SLAVE or epoch != self._epoch:
            return
        fresh = Endpoints(self.settings, self.etcd.timeout)
        try:
            _, leader, _ = fresh.call("reading the leader", lambda c: read_cluster(c, self.keys))
            if (
                leader is None
                or leader.get("create_revision") != epoch
                or (leader.get("host"), leader.get("port")) != (host, port)
                or not leader.get("lease")
            ):
                return
            log.warning(
                "Master %s refused replication at %s:%d: its process is gone; revoking its lease",
                leader.get("node"),
                host,
                port,
            )
            fresh.call("revoking the dead master's lease", lambda c: _revoke(c, leader["lease"]))
        except Exception as exc:  # its lease expires by itself anyway
            log.info("could not revoke the dead master's lease: %s", _short(exc))
        finally:
            fresh.close()

    @property
    def state(self) -> State:
        return self._state

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def known_epoch(self) -> int:
        return self._known_epoch

    @property
    def master(self) -> str | None:
        return self._master

    def peers(self) -> list[PeerView]:
        return [_view(record) for record in list(self._peers) if record.get("node") != self.node_id]

    def dropped(self) -> dict[str, int]:
        return {f"etcd-{name}": count for name, count in self.etcd.failures.items()}

    # -- etcd requests ----------------------------------------------------------------------

    def _grant(self) -> None:
        """A new lease (at start, or after ours expired in an outage)."""
        lease = self.etcd.call("granting a lease", lambda c: c.lease(self.ttl))
        started = time.monotonic()
        granted = self.etcd.call("renewing the new lease", lambda c: lease.refresh())
        self._lease_id = lease.id
        self._granted = max(self.ttl, granted)
        self._renewed_at = started
        self._next_renewal = started + self.delay
        if granted > self.ttl:
            log.info("etcd granted a %d s lease (its minimum) instead of %d s", granted, self.ttl)

    def _record(self) -> dict:
        role = {State.MASTER: "master"}.get(self._state, "slave")
        return {
            "node": self.node_id,
            "role": role,
            "epoch": self._epoch,
            "priority": self.settings.priority,
            "host": self.host,
            "port": self.port,
            "data_epoch": self._position[0],
            "data_seq": self._position[1],
        }

    def _publish(self, force: bool = False) -> None:
        record = self._record()
        if not force and record == self._published:
            return
        lease = self._lease_id
        value = json.dumps(record, separators=(",", ":"))
        self.etcd.call(
            "registering this node",
            lambda c: c.transaction(
                {
                    "compare": [],
                    "success": [
                        {
                            "request_put": {
                                "key": _b64(self.keys.node(self.node_id)),
                                "value": _b64(value),
                                "lease": lease,
                            }
                        }
                    ],
                    "failure": [],
                }
            ),
        )
        self._published = record

    def _renew(self) -> bool:
        """Keep the lease alive; False when the server says it is gone."""
        started = time.monotonic()
        lease = self._lease_id
        ttl = self.etcd.call("renewing the lease", lambda c: _keepalive(c, lease))
        if ttl <= 0:
            return False
        self._renewed_at = started
        self._next_renewal = started + self.delay
        if self._state is State.MASTER:
            self._acting_until = self._until()
        return True

    def _until(self) -> float:
        """When a master must stop acting: before the server can expire its lease."""
        return self._renewed_at + self._granted * (1 - GUARD_SHARE)

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._listener is not None
        try:
            log.info("Started listener")
            while not self._closing.is_set():
                if self._state is State.MASTER:
                    self._master_step()
                else:
                    self._slave_step()
        except Exception:  # the node must not keep a master without its loop
            log.critical("the etcd loop failed; stopping this node", exc_info=True)
            self._listener.on_failed("the etcd loop failed")

    def _master_step(self) -> None:
        assert self._listener is not None
        now = time.monotonic()
        if now >= self._acting_until:  # the clock first: a paused master must see it
            self._step_down("the lease could not be renewed in time")
            return
        if now >= self._next_renewal:
            try:
                if not self._renew():
                    self._step_down("etcd says the lease expired")
                    return
                _, leader, nodes = self.etcd.call(
                    "reading the cluster", lambda c: read_cluster(c, self.keys)
                )
                self._peers = nodes
                if leader is None or leader.get("create_revision") != self._epoch:
                    self._step_down("the leader key is no longer this node's")
                    return
                self._publish()
            except BackendError as exc:
                log.warning("etcd: %s; acting for %.2f s more", exc, self._left())
                self._closing.wait(min(self.delay / 4, max(0.0, self._left())))
                return
        wait = min(self._next_renewal, self._acting_until) - time.monotonic()
        if wait > 0:
            self._closing.wait(wait)

    def _left(self) -> float:
        return self._acting_until - time.monotonic()

    def _step_down(self, reason: str) -> None:
        assert self._listener is not None
        with self._lock:
            if self._state is not State.MASTER:
                return
            self._state = State.STOPPED
            self._acting_until = 0.0
        self._resigned = True  # nothing left to give up; the lease goes by itself
        self._closing.set()
        self._listener.on_demoted(reason)

    def _slave_step(self) -> None:
        assert self._listener is not None
        try:
            if time.monotonic() >= self._next_renewal:
                if not self._renew():
                    log.warning("this node's lease expired (etcd outage?); taking a new one")
                    self._grant()
                    self._published = None
                self._publish()
            revision, leader, nodes = self.etcd.call(
                "reading the cluster", lambda c: read_cluster(c, self.keys)
            )
        except BackendError as exc:
            log.warning("etcd: %s", exc)
            self._next_renewal = 0.0  # renew (or replace) the lease first next time
            self._closing.wait(self.delay / 2)
            return
        self._peers = nodes
        if self._closing.is_set():
            return
        if leader is not None:
            self._follow(leader)
            self._watch_leader(revision, self._next_renewal - time.monotonic())
            return
        if self._master is not None:
            self._listener.on_master_lost(self._master, "its leader key is gone")
            self._master = None
        self._state = State.CANDIDATE
        rank = self._rank(nodes)
        if rank and self._watch_leader(revision, rank * RANK_STEP * self.delay):
            return  # something happened to the leader key while waiting: look again
        if not self._closing.is_set():
            self._claim()

    def _follow(self, leader: dict) -> None:
        assert self._listener is not None
        epoch = int(leader.get("create_revision", 0))
        self._known_epoch = max(self._known_epoch, epoch)
        if leader.get("node") == self.node_id:
            # our own key from before a restart, bound to our old lease: it expires soon
            return
        if self._master == leader["node"] and self._epoch == epoch:
            return
        self._master = str(leader["node"])
        self._epoch = epoch
        self._state = State.SLAVE
        host, port = leader.get("host"), leader.get("port")
        endpoint = (str(host), int(port)) if isinstance(port, int) and port and host else None
        self._listener.on_following(self._master, epoch, endpoint)

    def _watch_leader(self, revision: int, timeout: float) -> bool:
        """Wait up to ``timeout`` for the leader key to change after ``revision`` (True)."""
        if timeout <= 0:
            return False
        try:
            self.etcd.call(
                "watching the leader key",
                lambda c: c.watch_once(self.keys.leader, timeout, start_revision=revision + 1),
            )
        except EtcdUnavailable:
            self._closing.wait(min(timeout, self.delay / 2))
            return False
        except Exception as exc:  # etcd3gw's WatchTimedOut: nothing changed
            if type(exc).__name__ != "WatchTimedOut":
                raise
            return False
        return True

    def _rank(self, nodes: list[dict]) -> int:
        """How many live nodes stand before this one (state position, priority, id)."""

        def key(record: dict) -> tuple:
            try:
                return rank_key(
                    int(record.get("data_epoch", 0)),
                    int(record.get("data_seq", 0)),
                    int(record.get("priority", 0)),
                    str(record["node"]),
                )
            except (TypeError, ValueError):
                return rank_key(0, 0, 0, str(record.get("node")))

        mine = rank_key(*self._position, self.settings.priority, self.node_id)
        return sum(1 for r in nodes if r.get("node") != self.node_id and key(r) < mine)

    def _claim(self) -> None:
        assert self._listener is not None
        lease = self._lease_id
        value = json.dumps(
            {"node": self.node_id, "host": self.host, "port": self.port}, separators=(",", ":")
        )
        try:
            answer = self.etcd.call(
                "claiming the leader key",
                lambda c: c.transaction(
                    {
                        "compare": [
                            {
                                "key": _b64(self.keys.leader),
                                "result": "EQUAL",
                                "target": "CREATE",
                                "create_revision": 0,
                            }
                        ],
                        "success": [
                            {
                                "request_put": {
                                    "key": _b64(self.keys.leader),
                                    "value": _b64(value),
                                    "lease": lease,
                                }
                            }
                        ],
                        "failure": [_range(self.keys.leader)],
                    }
                ),
            )
        except EtcdUnavailable as exc:
            log.warning("cannot claim the leader key: %s", exc)
            return
        except Exception as exc:  # the lease was revoked (resigning) or expired meanwhile
            log.info("the claim was refused: %s", _short(exc))
            return
        if not answer.get("succeeded"):
            return  # another node won: the next step follows it
        epoch = int(answer["header"]["revision"])
        if epoch <= self._stored_epoch:
            log.critical(
                "etcd's revision %d is not above this node's epoch %d (was the etcd cluster "
                "recreated?): not taking over; remove the epoch file in the node folder",
                epoch,
                self._stored_epoch,
            )
            self.resign(wait=True)
            self._listener.on_failed("etcd's revisions went back")
            return
        if not self._listener.persist_epoch(epoch):
            self.resign(wait=True)
            return
        with self._lock:
            if self._resigned:
                return
            self._stored_epoch = epoch
            self._epoch = self._known_epoch = epoch
            self._master = self.node_id
            self._acting_until = self._until()
            self._state = State.MASTER
        self._listener.on_promoted(epoch, "the leader key was free")
        try:
            self._publish()
        except EtcdUnavailable:
            pass  # the next renewal publishes it


def _keepalive(client: Any, lease: int) -> int:
    from etcd3gw.lease import Lease

    return int(Lease(lease, client).refresh())


def _revoke(client: Any, lease: int) -> None:
    from etcd3gw.lease import Lease

    Lease(lease, client).revoke()


def _view(record: dict) -> PeerView:
    return PeerView(
        str(record.get("node")),
        str(record.get("role", "slave")),
        int(record.get("epoch", 0) or 0),
        int(record.get("priority", 0) or 0),
        str(record.get("host", "")),
        int(record.get("port", 0) or 0),
    )


def collect_nodes(settings: Settings) -> tuple[list[dict], dict | None]:
    """The node records and the leader, as ``python -m cluster status`` shows them."""
    endpoints = Endpoints(settings, 2.0)
    keys = Keys(settings.etcd_prefix, settings.cluster)
    try:
        _, leader, nodes = endpoints.call("reading the cluster", lambda c: read_cluster(c, keys))
    finally:
        endpoints.close()
    return nodes, leader
