"""One view of Consul for every worker: the supervisor watches Consul once and hands each new snapshot to the workers.

With ``consulgw run --workers N`` the supervisor runs the only :class:`~consulgw.discovery.watcher.CatalogWatcher`
and publishes into a :class:`SnapshotHub`; each worker reads its copy with a :class:`SnapshotReceiver` and builds its
own view from it. Consul's load does not grow with N, and every worker receives each change at the same moment.

Wire format, over one Unix stream socket pair per worker (the supervisor owns both ends until the worker starts):
frames of a 4-byte big-endian length and a pickle (both ends are this program, on a private socket pair). A frame
is a tuple whose first item names it:

- ``("status", WatcherStatus)``: the watcher's status, sent when it changes (a worker's ``/-/ready`` and
  ``/-/routes`` read it);
- ``("begin", seq, full, services_index, kv_index)``, then ``("services", [...])`` and ``("kv", {...})`` chunks,
  then ``("end", seq, removed)``: one snapshot. ``full`` replaces everything the worker held (a new or restarted
  worker, or one that fell behind); otherwise the frames carry only what changed since ``seq - 1``.

Memory is bounded: a worker whose socket is not drained is sent nothing more until it is; the hub keeps the last
``history`` deltas (at most ``history_bytes`` of them), and a worker that needs an older one gets the whole current
snapshot instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from consulgw.discovery.watcher import Publish, WatcherStatus
from consulgw.model.snapshot import CatalogSnapshot, Health, Instance, ServiceSnapshot, Weights

_HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final = 256 * 1024 * 1024
SERVICES_PER_FRAME: Final = 128  # about 1,300 instances: a few milliseconds to encode or decode
KEYS_PER_FRAME: Final = 512
HISTORY: Final = 64
HISTORY_BYTES: Final = 32 * 1024 * 1024  # deltas kept for workers that are behind, at most (a mass change is big)

Frame = tuple[Any, ...]
EncodedService = tuple[str, int, tuple[tuple[Any, ...], ...]]


class ChannelClosed(Exception):
    """The other end of a snapshot channel went away."""


# -- encoding --------------------------------------------------------------------------------------------------------


def encode_service(svc: ServiceSnapshot) -> EncodedService:
    """A ServiceSnapshot as plain tuples (MappingProxyType does not pickle, and tuples pickle fastest)."""
    return (
        svc.name,
        svc.index,
        tuple(
            (
                i.id,
                i.service,
                i.service_id,
                i.node,
                i.address,
                i.port,
                i.tags,
                dict(i.meta),
                i.health.value,
                i.weights.passing,
                i.weights.warning,
                i.datacenter,
                i.wan_address,
                i.wan_port,
            )
            for i in svc.instances
        ),
    )


def decode_service(raw: EncodedService) -> ServiceSnapshot:
    name, index, instances = raw
    return ServiceSnapshot(
        name=name,
        index=index,
        instances=tuple(
            Instance(
                id=iid,
                service=service,
                service_id=service_id,
                node=node,
                address=address,
                port=port,
                tags=tuple(tags),
                meta=MappingProxyType(meta),
                health=Health(health),
                weights=Weights(passing=passing, warning=warning),
                datacenter=datacenter,
                wan_address=wan_address,
                wan_port=wan_port,
            )
            for (
                iid,
                service,
                service_id,
                node,
                address,
                port,
                tags,
                meta,
                health,
                passing,
                warning,
                datacenter,
                wan_address,
                wan_port,
            ) in instances
        ),
    )


def frame(item: Frame) -> bytes:
    body = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def snapshot_frames(
    seq: int,
    snapshot: CatalogSnapshot,
    *,
    full: bool,
    services: Iterable[str],
    removed: Iterable[str],
    kv: bool,
    remote: bool = True,
) -> Iterator[bytes]:
    """The frames of one snapshot: ``services`` (names in ``snapshot``), with ``kv`` every KV document, and with
    ``remote`` every remote-datacenter snapshot (failover: a few services, so always all of them)."""
    yield frame(("begin", seq, full, snapshot.services_index, snapshot.kv_index, snapshot.complete))
    for names in _chunks(services, SERVICES_PER_FRAME):
        yield frame(("services", [encode_service(snapshot.services[n]) for n in names]))
    if remote:
        yield frame(("remote", [(key, encode_service(svc)) for key, svc in snapshot.remote.items()]))
    if kv:
        yield frame(("kv_begin",))
        for keys in _chunks(snapshot.kv, KEYS_PER_FRAME):
            yield frame(("kv", {k: snapshot.kv[k] for k in keys}))
    yield frame(("end", seq, tuple(removed)))


# -- supervisor side -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Delta:
    seq: int
    frames: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return sum(len(f) for f in self.frames)


class SnapshotHub:
    """The supervisor's end: ``publish`` is the watcher's callback; ``serve`` feeds one worker's channel."""

    def __init__(self, *, history: int = HISTORY, history_bytes: int = HISTORY_BYTES) -> None:
        self._seq = 0
        self._latest: CatalogSnapshot | None = None
        self._deltas: deque[_Delta] = deque(maxlen=history)
        self._history_bytes = history_bytes
        self._status: WatcherStatus | None = None
        self._wakeups: set[asyncio.Event] = set()

    @property
    def seq(self) -> int:
        return self._seq

    def publish(self, snapshot: CatalogSnapshot) -> None:
        """Take the watcher's new snapshot (its ``changed`` is relative to the previous one published here)."""
        previous = self._latest
        self._seq += 1
        if previous is not None:
            removed = [n for n in snapshot.changed if n not in snapshot.services]
            changed = sorted(n for n in snapshot.changed if n in snapshot.services)
            frames = snapshot_frames(
                self._seq,
                snapshot,
                full=False,
                services=changed,
                removed=removed,
                kv=snapshot.kv_changed,
                remote=previous.remote != snapshot.remote,
            )
            self._deltas.append(_Delta(self._seq, tuple(frames)))
            while sum(d.size for d in self._deltas) > self._history_bytes and len(self._deltas) > 1:
                self._deltas.popleft()  # a worker that needs it gets the whole snapshot instead
        self._latest = snapshot
        self._notify()

    def set_status(self, status: WatcherStatus) -> None:
        if status != self._status:
            self._status = status
            self._notify()

    def _notify(self) -> None:
        for event in self._wakeups:
            event.set()

    async def serve(self, writer: asyncio.StreamWriter, *, first: Iterable[bytes] = ()) -> None:
        """Send ``first`` (e.g. the worker's settings), then every status and snapshot, until cancelled or the
        worker goes away (ChannelClosed). The caller owns and closes ``writer``."""
        wakeup = asyncio.Event()
        wakeup.set()
        self._wakeups.add(wakeup)
        sent_seq = 0
        sent_status: WatcherStatus | None = None
        try:
            for data in first:
                writer.write(data)
            await _drain(writer)
            while True:
                await wakeup.wait()
                wakeup.clear()
                status = self._status
                if status is not None and status != sent_status:
                    writer.write(frame(("status", status)))
                    sent_status = status
                if self._latest is not None and sent_seq != self._seq:
                    sent_seq = await self._send_snapshot(writer, sent_seq)
                await _drain(writer)
        finally:
            self._wakeups.discard(wakeup)

    async def _send_snapshot(self, writer: asyncio.StreamWriter, sent_seq: int) -> int:
        chain = [d for d in self._deltas if d.seq > sent_seq]
        if sent_seq and chain and chain[0].seq == sent_seq + 1 and chain[-1].seq == self._seq:
            for delta in chain:
                for data in delta.frames:
                    writer.write(data)
            return self._seq
        # A new worker, or one that fell further behind than the history: the whole current snapshot.
        snapshot = self._latest
        assert snapshot is not None
        seq = self._seq
        frames = snapshot_frames(seq, snapshot, full=True, services=sorted(snapshot.services), removed=(), kv=True)
        for count, data in enumerate(frames, 1):
            writer.write(data)
            if count % 8 == 0:
                await _drain(writer)  # encoding 10,000 services takes a while: let the loop breathe
        return seq


async def _drain(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
    except (ConnectionError, OSError) as exc:
        raise ChannelClosed(str(exc)) from exc


# -- worker side -----------------------------------------------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ChannelClosed(f"frame of {size} bytes is larger than {MAX_FRAME}")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
        raise ChannelClosed(str(exc) or type(exc).__name__) from exc
    item = pickle.loads(body)  # written by this program's supervisor, on a private socket pair
    if not isinstance(item, tuple) or not item or not isinstance(item[0], str):
        raise ChannelClosed(f"unexpected frame {type(item).__name__}")
    return item


class SnapshotReceiver:
    """A worker's end: the same ``run(publish)``, ``status`` and ``watch_also`` as a CatalogWatcher, fed by the
    supervisor (``watch_also`` is sent back to it on ``writer``)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None = None,
        *,
        on_status: Callable[[WatcherStatus], None] | None = None,
    ):
        self._reader = reader
        self._writer = writer
        self._status = WatcherStatus()
        self._on_status = on_status
        self._services: dict[str, ServiceSnapshot] = {}
        self._kv: Mapping[str, bytes] = MappingProxyType({})
        self._remote: Mapping[tuple[str, str], ServiceSnapshot] = MappingProxyType({})
        self._seq = 0
        self.snapshots = 0  # snapshots received

    @property
    def status(self) -> WatcherStatus:
        return self._status

    @property
    def seq(self) -> int:
        """The supervisor's number of the last snapshot received (the same in every worker for the same change)."""
        return self._seq

    def watch_also(self, names: frozenset[str]) -> None:
        """Ask the supervisor's watcher to also watch these services (every worker's view names the same ones)."""
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(frame(("watch_also", names)))

    def watch_remote(self, pairs: frozenset[tuple[str, str]]) -> None:
        """Ask the supervisor's watcher to watch these (service, datacenter) pairs (failover policies)."""
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(frame(("watch_remote", pairs)))

    async def run(self, publish: Publish) -> None:
        """Read until the supervisor closes the channel (returns) or the task is cancelled."""
        with contextlib.suppress(ChannelClosed):
            while True:
                item = await read_frame(self._reader)
                kind = item[0]
                if kind == "status":
                    self._status = item[1]
                    if self._on_status is not None:
                        self._on_status(self._status)
                elif kind == "begin":
                    snapshot = await self._read_snapshot(item)
                    if snapshot is not None:
                        self.snapshots += 1
                        publish(snapshot)

    async def _read_snapshot(self, begin: Frame) -> CatalogSnapshot | None:
        _, seq, full, services_index, kv_index, complete = begin
        incoming: dict[str, ServiceSnapshot] = {}
        kv: dict[str, bytes] | None = None
        remote: dict[tuple[str, str], ServiceSnapshot] | None = None
        while True:
            item = await read_frame(self._reader)
            kind = item[0]
            if kind == "services":
                for raw in item[1]:
                    svc = decode_service(raw)
                    incoming[svc.name] = svc
                # A cold start's 10,000 services arrive in many frames: let requests and timers run between them
                # (twice: after one sleep(0) the loop would run this task again before what its poll found).
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            elif kind == "remote":
                remote = {tuple(key): decode_service(raw) for key, raw in item[1]}
            elif kind == "kv_begin":
                kv = {}
            elif kind == "kv":
                assert kv is not None
                kv.update(item[1])
            elif kind == "status":
                self._status = item[1]
            elif kind == "end":
                removed: tuple[str, ...] = item[2]
                break
            else:
                raise ChannelClosed(f"unexpected frame {kind!r} inside a snapshot")
        previous = self._services
        services = dict(incoming) if full else dict(previous)
        for name in removed:
            services.pop(name, None)
        changed: set[str] = set(removed)
        for name, svc in incoming.items():
            old = previous.get(name)
            if old is not None and old == svc:
                services[name] = old  # unchanged: the very same object, as the watcher keeps it
            else:
                services[name] = svc
                changed.add(name)
        if full:
            changed.update(n for n in previous if n not in services)
        if remote is not None:
            old_remote = self._remote
            for key in old_remote.keys() | remote.keys():
                if old_remote.get(key) != remote.get(key):
                    changed.add(key[0])  # the service whose other datacenter changed
                elif key in old_remote:
                    remote[key] = old_remote[key]  # unchanged: the very same object
            self._remote = MappingProxyType(remote)
        kv_changed = kv is not None and self._kv != kv
        if kv is not None:
            self._kv = MappingProxyType(kv)
        first = self._seq == 0
        self._seq = seq
        self._services = services
        if not first and not changed and not kv_changed:
            return None
        return CatalogSnapshot(
            services=MappingProxyType(dict(services)),
            kv=self._kv,
            services_index=services_index,
            kv_index=kv_index,
            complete=complete,
            changed=frozenset(services) | frozenset(n for n, _ in self._remote) if first else frozenset(changed),
            kv_changed=True if first else kv_changed,
            remote=self._remote,
        )
