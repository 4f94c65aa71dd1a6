"""Upstream pools: the runtime state of load balancing, kept outside the immutable route table.

One :class:`UpstreamPools` per gateway process, used from a single event loop (no locks). ``update`` swaps in a new
immutable member list for a service; the per-instance counters (in-flight requests, requests sent, the smooth
round-robin current weight) live in a per-service state object shared by every :class:`ServicePool` built for
that service, so they survive updates for instances that stay, and a request that picked from an older pool
still releases into the same counters. An instance that leaves keeps its counter until its last in-flight
request is released; then the counter is dropped.

Subsets (issue 9): ``update`` may also be given the members of a service's named subsets (selected by the view from
the same instances); each gets a ``ServicePool`` of its own (``pool.subset``) that shares the service's counters and
join times but has its own round-robin position.

Slow start: the state remembers when each member joined (first seen with weight > 0, or back from critical). With a
slow-start window, a pick made while a member is inside its window uses ramped weights
(:func:`~consulgw.upstream.balancer.slow_start_weight`), read from the injected clock at pick time. Members of the
first member list a service ever gets are not ramped: a gateway that starts does not slow-start every instance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

from consulgw.clock import Clock, SystemClock
from consulgw.errors import ConfigError
from consulgw.model.balancing import IP_HASH, LB_ALGORITHMS, LEAST_CONN
from consulgw.model.snapshot import Health, Instance
from consulgw.upstream.balancer import (
    SLOW_START_SCALE,
    Available,
    Rendezvous,
    least_conn_pick,
    slow_start_weight,
    smooth_weighted_pick,
)

_SERVING = (Health.PASSING, Health.WARNING)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStats:
    """A read-only snapshot of one instance's counters (for the admin page)."""

    instance_id: str
    in_flight: int
    requests: int  # requests sent to it since it first appeared (survives pool updates)
    member: bool  # False while a departed instance finishes its in-flight requests


class _Counter:
    __slots__ = ("in_flight", "requests")

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests = 0


class _ServiceState:
    """Mutable counters of one service, shared by all its ServicePool generations (and its subsets' pools)."""

    __slots__ = (
        "clock",
        "counters",
        "current",
        "joined",
        "last_join",
        "members",
        "on_drained",
        "scaled",
        "seen",
        "subset_current",
    )

    def __init__(self, on_drained: Callable[[_ServiceState], None], clock: Clock) -> None:
        self.counters: dict[str, _Counter] = {}
        self.current: dict[str, int] = {}  # smooth WRR current weights, members only
        self.subset_current: dict[str, dict[str, int]] = {}  # the same, per subset
        self.members: frozenset[str] = frozenset()
        self.on_drained = on_drained
        self.clock = clock
        self.joined: dict[str, float] = {}  # member id -> clock.monotonic() when it joined (slow start)
        self.last_join = -math.inf
        self.seen = False  # a member list was set before (the first one joins nobody)
        self.scaled = False  # the last pick used ramped (scaled) weights

    def set_members(self, ids: frozenset[str]) -> None:
        if self.seen:
            now = self.clock.monotonic()
            for new in ids - self.members:
                self.joined[new] = now
                self.last_join = now
        self.seen = True
        self.members = ids
        for gone in [i for i in self.joined if i not in ids]:
            del self.joined[gone]
        for current in (self.current, *self.subset_current.values()):
            for gone in [i for i in current if i not in ids]:
                del current[gone]
        for gone in [i for i, c in self.counters.items() if i not in ids and c.in_flight <= 0]:
            del self.counters[gone]
        if not ids and not self.counters:
            self.on_drained(self)

    def ramped(self, members: tuple[Instance, ...], window: float) -> dict[str, int] | None:
        """Weights for this pick when some member is inside its slow-start window, else None (own weights)."""
        now = self.clock.monotonic()
        ramping = now - self.last_join < window
        if ramping != self.scaled:  # scaled and plain weights do not mix in a round-robin position: start over
            self.scaled = ramping
            self.current.clear()
            for current in self.subset_current.values():
                current.clear()
        if not ramping:
            return None
        joined = self.joined
        weights: dict[str, int] = {}
        for member in members:
            started = joined.get(member.id)
            weights[member.id] = (
                member.weight * SLOW_START_SCALE
                if started is None
                else slow_start_weight(member.weight, now - started, window)
            )
        return weights

    def acquire(self, instance_id: str) -> None:
        counter = self.counters.get(instance_id)
        if counter is None:
            counter = self.counters[instance_id] = _Counter()
        counter.in_flight += 1
        counter.requests += 1

    def release(self, instance_id: str) -> None:
        counter = self.counters.get(instance_id)
        if counter is None or counter.in_flight <= 0:
            return  # unknown or already released: never go negative
        counter.in_flight -= 1
        if counter.in_flight == 0 and instance_id not in self.members:
            del self.counters[instance_id]
            if not self.members and not self.counters:
                self.on_drained(self)

    def in_flight(self) -> dict[str, int]:
        return {i: c.in_flight for i, c in self.counters.items()}

    def stats(self) -> Mapping[str, InstanceStats]:
        idle = _Counter()
        return MappingProxyType(
            {
                i: InstanceStats(
                    instance_id=i,
                    in_flight=(c := self.counters.get(i, idle)).in_flight,
                    requests=c.requests,
                    member=i in self.members,
                )
                for i in sorted(self.members | self.counters.keys())
            }
        )


class ServicePool:
    """One service's (or subset's) members (instances with weight > 0, sorted by id) and its balancer.

    The member list is immutable; picks and in-flight counting go to the service's shared counters.
    """

    __slots__ = (
        "_algorithm",
        "_by_id",
        "_current",
        "_draining",
        "_members",
        "_remote",
        "_rendezvous",
        "_rng",
        "_service",
        "_slow_start",
        "_state",
        "_subsets",
        "datacenter",
        "name",
    )

    def __init__(
        self,
        *,
        service: str,
        members: tuple[Instance, ...],
        algorithm: str,
        rng: random.Random,
        state: _ServiceState,
        draining: tuple[Instance, ...] = (),
        slow_start: float | None = None,
        current: dict[str, int] | None = None,
        subsets: Mapping[str, ServicePool] | None = None,
        name: str | None = None,
        remote: Mapping[str, ServicePool] | None = None,
        datacenter: str = "",
    ) -> None:
        self._service = service
        self._members = members
        self._by_id = {m.id: m for m in members}
        self._draining = {m.id: m for m in draining}
        self._algorithm = algorithm
        self._rng = rng
        self._state = state
        self._current = state.current if current is None else current
        self._slow_start = slow_start
        self._subsets: Mapping[str, ServicePool] = subsets or {}
        self.name = name  # the subset's name; None for the whole service
        self._remote: Mapping[str, ServicePool] = remote or {}
        self.datacenter = datacenter  # the datacenter of these members ("" unknown); a remote pool's is its own
        self._rendezvous = Rendezvous.build(members) if algorithm == IP_HASH else None

    @property
    def service(self) -> str:
        return self._service

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def members(self) -> tuple[Instance, ...]:
        return self._members

    def __len__(self) -> int:
        return len(self._members)

    def member(self, instance_id: str) -> Instance | None:
        """The member with this id, if it is one (weight > 0)."""
        return self._by_id.get(instance_id)

    def pinnable(self, instance_id: str) -> Instance | None:
        """A member, or a healthy instance drained to weight 0 (which takes no new clients but may keep its
        sticky sessions): what a preferred instance may be."""
        member = self._by_id.get(instance_id)
        return member if member is not None else self._draining.get(instance_id)

    @property
    def draining(self) -> tuple[Instance, ...]:
        """Healthy (passing or warning) instances whose weight is 0, sorted by id."""
        return tuple(self._draining.values())

    def subset(self, name: str) -> ServicePool | None:
        """The pool of one of the service's named subsets (selector subsets only; see ``UpstreamPools.update``)."""
        return self._subsets.get(name)

    @property
    def subsets(self) -> Mapping[str, ServicePool]:
        return self._subsets

    def remote(self, datacenter: str) -> ServicePool | None:
        """The pool of the service's instances in another datacenter (failover), if it is watched."""
        return self._remote.get(datacenter)

    @property
    def remotes(self) -> Mapping[str, ServicePool]:
        return self._remote

    def pick(
        self, client_key: str, *, exclude: frozenset[str] = frozenset(), available: Available | None = None
    ) -> Instance | None:
        """Choose an instance, or None when no member is left after ``exclude`` and ``available``.

        ``client_key`` (the client IP) only matters for ``ip_hash``. ``exclude`` holds instance ids a retry has
        already tried. ``available`` is called lazily, on the candidate about to be returned, best first.
        Call :meth:`acquire` (or use :meth:`lease`) for the returned instance before the next ``await``.
        """
        members = self._members
        if len(members) == 1 and not exclude:  # the common single-instance case: every algorithm agrees
            only = members[0]
            return only if available is None or available(only) else None
        weights = self._state.ramped(members, self._slow_start) if self._slow_start is not None else None
        if self._rendezvous is not None:
            return self._rendezvous.pick(client_key, exclude=exclude, available=available, weights=weights)
        if exclude:
            members = tuple(m for m in members if m.id not in exclude)
        if self._algorithm == LEAST_CONN:
            return least_conn_pick(members, self._state.in_flight(), self._rng, available=available, weights=weights)
        return smooth_weighted_pick(members, self._current, available=available, weights=weights)

    def acquire(self, instance_id: str) -> None:
        """Count a request as in flight to ``instance_id`` (and in its request total)."""
        self._state.acquire(instance_id)

    def release(self, instance_id: str) -> None:
        """End a request counted by :meth:`acquire`. Safe after the instance left the pool, and idempotent at 0."""
        self._state.release(instance_id)

    @contextmanager
    def lease(self, instance_id: str) -> Iterator[None]:
        """``acquire`` now, ``release`` on exit (also on error or cancellation)."""
        self._state.acquire(instance_id)
        try:
            yield
        finally:
            self._state.release(instance_id)

    def stats(self) -> Mapping[str, InstanceStats]:
        """Counters of every member (zeros if never picked) and of departed instances still finishing requests."""
        return self._state.stats()


class UpstreamPools:
    """Every routed service's pool. Single event loop; ``update`` is called by the snapshot consumer."""

    __slots__ = ("_clock", "_pools", "_rng", "_states")

    def __init__(self, *, rng: random.Random, clock: Clock | None = None) -> None:
        self._rng = rng
        self._clock = clock or SystemClock()
        self._pools: dict[str, ServicePool] = {}
        self._states: dict[str, _ServiceState] = {}

    def update(
        self,
        service: str,
        instances: Sequence[Instance],
        algorithm: str,
        *,
        subsets: Mapping[str, Sequence[Instance]] | None = None,
        slow_start: float | None = None,
        remote: Mapping[str, Sequence[Instance]] | None = None,
        datacenter: str = "",
    ) -> None:
        """Replace ``service``'s members with ``instances`` that have weight > 0 (first of each id wins).

        ``subsets`` (name -> instances, a selection of ``instances``) get pools of their own, with the same
        balancer, counters and join times; ``slow_start`` is the ramp window in seconds (None: no ramp).
        ``remote`` (datacenter -> its instances, ids distinct from the local ones) get pools of their own the same
        way (failover); ``datacenter`` names the local one ("" unknown).
        """
        if algorithm not in LB_ALGORITHMS:
            raise ConfigError(
                f"balancer for service {service!r}: {algorithm!r} is not one of {', '.join(LB_ALGORITHMS)}"
            )
        members, draining = _split_members(instances)
        state = self._states.get(service)
        if state is None:
            state = self._states[service] = _ServiceState(self._drop_state_for(service), self._clock)

        def part(
            selected: Sequence[Instance], current: str, name: str | None = None, datacenter: str = ""
        ) -> ServicePool:
            """A pool of some of the service's instances (a subset, or a failover datacenter's): its own balancer
            position (``current``), the service's state and counters."""
            part_members, part_draining = _split_members(selected)
            return ServicePool(
                service=service,
                members=part_members,
                algorithm=algorithm,
                rng=self._rng,
                state=state,
                draining=part_draining,
                slow_start=slow_start,
                current=state.subset_current.setdefault(current, {}),
                name=name,
                datacenter=datacenter,
            )

        subset_pools = {name: part(selected, name, name=name) for name, selected in (subsets or {}).items()}
        remote_pools = {dc: part(selected, _REMOTE + dc, datacenter=dc) for dc, selected in (remote or {}).items()}
        remote_ids = {m.id for pool in remote_pools.values() for m in pool.members}
        kept = subset_pools.keys() | {_REMOTE + dc for dc in remote_pools}
        for gone in [name for name in state.subset_current if name not in kept]:
            del state.subset_current[gone]
        self._pools[service] = ServicePool(
            service=service,
            members=members,
            algorithm=algorithm,
            rng=self._rng,
            state=state,
            draining=draining,
            slow_start=slow_start,
            subsets=subset_pools,
            remote=remote_pools,
            datacenter=datacenter,
        )
        state.set_members(frozenset(m.id for m in members) | remote_ids)

    def remove(self, service: str) -> None:
        """Forget ``service``: new picks find no pool; requests in flight still release their counters."""
        self._pools.pop(service, None)
        state = self._states.get(service)
        if state is not None:
            state.set_members(frozenset())

    def pool(self, service: str) -> ServicePool | None:
        return self._pools.get(service)

    def subset(self, service: str, name: str) -> ServicePool | None:
        """The pool of ``service``'s subset ``name`` (None when the service or the subset is unknown)."""
        pool = self._pools.get(service)
        return pool.subset(name) if pool is not None else None

    def services(self) -> frozenset[str]:
        return frozenset(self._pools)

    def stats(self, service: str) -> Mapping[str, InstanceStats]:
        """Per-instance counters of ``service`` (empty when unknown)."""
        state = self._states.get(service)
        return state.stats() if state is not None else MappingProxyType({})

    def _drop_state_for(self, service: str) -> Callable[[_ServiceState], None]:
        def drop(state: _ServiceState) -> None:
            if self._states.get(service) is state and service not in self._pools:
                del self._states[service]

        return drop


_REMOTE = "@"  # prefix of a remote datacenter's round-robin state in _ServiceState.subset_current


def _split_members(instances: Sequence[Instance]) -> tuple[tuple[Instance, ...], tuple[Instance, ...]]:
    """(members: weight > 0, draining: passing or warning at weight 0), each sorted by id, first of each id wins."""
    by_id: dict[str, Instance] = {}
    drained: dict[str, Instance] = {}
    for inst in instances:
        if inst.weight > 0:
            by_id.setdefault(inst.id, inst)
        elif inst.health in _SERVING:
            drained.setdefault(inst.id, inst)
    members = tuple(by_id[i] for i in sorted(by_id))
    draining = tuple(drained[i] for i in sorted(drained) if i not in by_id)
    return members, draining
