"""Load-balancing strategies: no IO, no globals; state and randomness are passed in.

Every strategy takes the members eligible for this pick (weight > 0, not excluded by a retry) and an optional
``available`` predicate (e.g. "the circuit breaker lets a request through"). ``available`` is called lazily, only
on the member about to be returned, in preference order; a member it rejects is skipped and the next best is
tried. So a breaker may use the call to claim its single half-open probe without starving other members.

* :func:`smooth_weighted_pick` -- nginx's smooth weighted round-robin (weights 5/1/1 give ``a a b a c a a``).
* :func:`least_conn_pick` -- weighted least connections: min ``in_flight / weight``; ties go to a weighted random
  choice among the tied members (so idle pools still honour weights).
* :class:`Rendezvous` -- weighted rendezvous (HRW) hashing of a client key: removing a member moves only its own
  keys; adding one moves only the keys it wins (about ``weight / total weight`` of them).

Each strategy also takes optional ``weights`` (instance id -> weight) that replace the members' own weights for this
pick: slow start (:func:`slow_start_weight`) ramps a joining instance up through them.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from consulgw.model.snapshot import Instance

Available = Callable[[Instance], bool]
Weights = Mapping[str, int]

_MASK = (1 << 64) - 1


def smooth_weighted_pick(
    members: Sequence[Instance],
    current: MutableMapping[str, int],
    *,
    available: Available | None = None,
    weights: Weights | None = None,
) -> Instance | None:
    """One step of smooth weighted round-robin over ``members``; ``current`` (instance id -> current weight) is
    updated in place. Members rejected by ``available`` take no part in the step, as in nginx.
    """
    if not members:
        return None
    if available is None:
        best: Instance | None = None
        best_weight = 0
        total = 0
        for member in members:
            own = member.weight if weights is None else weights[member.id]
            weight = current.get(member.id, 0) + own
            current[member.id] = weight
            total += own
            if best is None or weight > best_weight:
                best, best_weight = member, weight
        if best is not None:
            current[best.id] = best_weight - total
        return best

    def weight_of(member: Instance) -> int:
        return member.weight if weights is None else weights[member.id]

    # Lazy path: rank by the weight each member would reach, return the first available one, then commit the
    # step over everyone not rejected (the chosen member is the maximum of that set, so this is nginx's step).
    ranked = sorted(members, key=lambda m: -(current.get(m.id, 0) + weight_of(m)))
    rejected: set[str] = set()
    chosen: Instance | None = None
    for member in ranked:
        if available(member):
            chosen = member
            break
        rejected.add(member.id)
    if chosen is None:
        return None
    total = 0
    for member in members:
        if member.id not in rejected:
            current[member.id] = current.get(member.id, 0) + weight_of(member)
            total += weight_of(member)
    current[chosen.id] -= total
    return chosen


def least_conn_pick(
    members: Sequence[Instance],
    in_flight: Mapping[str, int],
    rng: random.Random,
    *,
    available: Available | None = None,
    weights: Weights | None = None,
) -> Instance | None:
    """The member with the least ``in_flight / weight``; ties broken by a weighted random choice from ``rng``.

    With ``weights`` (slow start is ramping someone up), a weighted random choice by ``weight / (in_flight + 1)``
    instead (Envoy's least-request with bias 1): a member that is idle only because it is new must not win every
    pick against busier full-weight members, so its ramped weight counts at any load.
    """
    if weights is not None:
        return _least_request_pick(members, in_flight, rng, available, weights)
    remaining = list(members)
    while remaining:
        tied: list[Instance] = []
        best_load = best_weight = 0
        for member in remaining:
            load = in_flight.get(member.id, 0)
            weight = member.weight
            if not tied:
                tied, best_load, best_weight = [member], load, weight
                continue
            # load / weight < best_load / best_weight, without floats
            lhs, rhs = load * best_weight, best_load * weight
            if lhs < rhs:
                tied, best_load, best_weight = [member], load, weight
            elif lhs == rhs:
                tied.append(member)
        chosen = tied[0] if len(tied) == 1 else rng.choices(tied, weights=[m.weight for m in tied])[0]
        if available is None or available(chosen):
            return chosen
        remaining.remove(chosen)
    return None


def _least_request_pick(
    members: Sequence[Instance],
    in_flight: Mapping[str, int],
    rng: random.Random,
    available: Available | None,
    weights: Weights,
) -> Instance | None:
    remaining = [m for m in members if weights[m.id] > 0]
    while remaining:
        scores = [weights[m.id] / (in_flight.get(m.id, 0) + 1) for m in remaining]
        chosen = rng.choices(remaining, weights=scores)[0]
        if available is None or available(chosen):
            return chosen
        remaining.remove(chosen)
    return None


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and every run (unlike the salted built-in ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _mix(value: int) -> int:
    """splitmix64's finalizer: a cheap, well-distributed 64-bit -> 64-bit mix."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Weighted rendezvous hashing over a fixed member list (build once per pool update).

    Each member's score for a key is ``weight / -ln(u)``, with ``u`` in (0, 1) a stable hash of (key, member id);
    the highest score wins. This gives every member exactly ``weight / total`` of the keys in expectation, and a
    member's scores do not depend on the other members, hence minimal movement when membership changes.
    """

    members: tuple[tuple[Instance, int], ...]  # (instance, blake2b(instance id))

    @classmethod
    def build(cls, members: Sequence[Instance]) -> Rendezvous:
        return cls(tuple((m, stable_hash(m.id)) for m in members))

    def ranked(
        self, key: str, *, exclude: frozenset[str] = frozenset(), weights: Weights | None = None
    ) -> list[Instance]:
        """Members from best to worst for ``key`` (the order a retry walks)."""
        key_hash = stable_hash(key)
        scored = [
            (_score(key_hash, seed, weight), m.id, m)
            for m, seed in self.members
            if m.id not in exclude and (weight := m.weight if weights is None else weights[m.id])
        ]
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [m for _, _, m in scored]

    def pick(
        self,
        key: str,
        *,
        exclude: frozenset[str] = frozenset(),
        available: Available | None = None,
        weights: Weights | None = None,
    ) -> Instance | None:
        if available is None:
            key_hash = stable_hash(key)
            best: Instance | None = None
            best_score = -1.0
            for member, seed in self.members:
                weight = member.weight if weights is None else weights[member.id]
                if member.id in exclude or weight <= 0:
                    continue
                score = _score(key_hash, seed, weight)
                if score > best_score or (score == best_score and best is not None and member.id < best.id):
                    best, best_score = member, score
            return best
        for member in self.ranked(key, exclude=exclude, weights=weights):
            if available(member):
                return member
        return None


def _score(key_hash: int, seed: int, weight: int) -> float:
    unit = ((_mix(key_hash ^ seed) >> 11) + 0.5) / 9007199254740992.0  # (0, 1), 53 bits
    return weight / -math.log(unit)


def rendezvous_choice(key: str, choices: Sequence[tuple[str, int, int]]) -> str | None:
    """Weighted rendezvous over named choices ``(name, stable_hash(name), weight)``: the name ``key`` goes to.

    The same key always gets the same name, in every process; a weight change moves only keys between the choices
    whose share changed (raising one weight moves keys only to it). Weight 0 never wins. None when all are 0.
    """
    key_hash = stable_hash(key)
    best: str | None = None
    best_score = -1.0
    for name, seed, weight in choices:
        if weight <= 0:
            continue
        score = _score(key_hash, seed, weight)
        if score > best_score or (score == best_score and best is not None and name < best):
            best, best_score = name, score
    return best


# -- slow start ------------------------------------------------------------------------------------------------------

SLOW_START_SCALE = 100  # weights are scaled while anyone ramps, so that 1% steps stay integers
SLOW_START_MIN_SHARE = 0.1  # a joining instance starts at this fraction of its weight


def slow_start_weight(weight: int, elapsed: float, window: float) -> int:
    """``weight`` (scaled by SLOW_START_SCALE) of an instance that joined ``elapsed`` seconds ago: from
    SLOW_START_MIN_SHARE of it at once, linearly up to all of it at ``window``; never below 1 while ``weight`` > 0."""
    full = weight * SLOW_START_SCALE
    if elapsed >= window or weight <= 0:
        return full
    share = max(SLOW_START_MIN_SHARE, elapsed / window if window > 0 else 1.0)
    return max(1, int(full * share))
