"""Deterministic, order-independent selection by hashing (seed, key).

Every key gets a rank value: the first 8 bytes of sha256(f"{seed}:{key}"). Inside a group (a parent
split, a stratum, a class), the keys sorted by (rank value, key) form a permutation that depends only
on the seed and on the *set* of keys, never on the order they arrive in or on how they are sharded.
Parts of given sizes are consecutive runs of that permutation, so fraction F of n records is exactly
round(F * n) of them, and the kept set for F=0.25 lies inside the kept set for F=0.5.

Fitting keeps 8 bytes per key; afterwards only the cut points are kept (one (value, key) pair per cut
and group), and assigning a key to its part is a binary search. Equal rank values (a 64-bit collision,
or a coarse hash in tests) are ordered by the key itself, found in a second look at the keys.
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

import numpy as np

from vlmforge.errors import UserError
from vlmforge.sample import make_key

_TOP = 1 << 64  # above every rank value


def rank_value(seed: int | str, key: str) -> int:
    """The rank value of `key` under `seed`: first 8 bytes of sha256(f"{seed}:{key}"), big-endian."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def round_half_up(x: float) -> int:
    """Rounding that does not depend on parity (Python's round(2.5) is 2)."""
    return math.floor(x + 0.5)


def fraction_sizes(fractions: list[float], n: int) -> list[int]:
    """Sizes of parts with these fractions of `n` records: cut at round(cumulative fraction * n), so
    each part is within one record of fraction * n and the sizes add up to round(sum * n)."""
    cuts, total = [], 0.0
    for f in fractions:
        total += f
        cuts.append(min(n, round_half_up(total * n)))
    return [b - a for a, b in zip([0] + cuts[:-1], cuts)]


@dataclass
class Cuts:
    """Fitted cut points: for each group, the thresholds between consecutive parts."""

    seed: int | str
    thresholds: dict[Hashable, list[tuple[int, str]]] = field(default_factory=dict)
    sizes: dict[Hashable, list[int]] = field(default_factory=dict)
    value: Callable[[int | str, str], int] = rank_value

    def part(self, key: str, group: Hashable = None, value: int | None = None) -> int | None:
        """Index of the part `key` falls in, or None when it lies beyond the last part (dropped).
        `value` is the key's rank value when already known."""
        cuts = self.thresholds.get(group)
        if cuts is None:
            return None
        i = bisect_right(cuts, (self.value(self.seed, key) if value is None else value, key))
        return i if i < len(cuts) else None

    def counts(self) -> dict[Hashable, list[int]]:
        return {g: list(s) for g, s in self.sizes.items()}


def fit_cuts(
    items: Callable[[], Iterable[tuple[str, Hashable]]],
    seed: int | str,
    sizes: Callable[[Hashable, int], list[int]],
    value: Callable[[int | str, str], int] = rank_value,
) -> Cuts:
    """Fit cut points over `items()`: (key, group) pairs of unique keys, or (key, group, rank value)
    when the values are already known. `sizes(group, n)` gives the part sizes for a group of n keys
    (they may add up to less than n: the rest is dropped). `items` is called a second time only when
    rank values tie across a cut."""
    per_group: dict[Hashable, array] = {}
    for item in items():
        group = item[1]
        arr = per_group.get(group)
        if arr is None:
            arr = per_group[group] = array("Q")
        arr.append(item[2] if len(item) > 2 else value(seed, item[0]))
    cuts = Cuts(seed, value=value)
    pending: dict[Hashable, list[tuple[int, int]]] = {}  # group -> [(cut index, position)] tied
    sorted_values: dict[Hashable, np.ndarray] = {}
    for group in sorted(per_group, key=repr):
        vals = np.sort(np.frombuffer(per_group.pop(group), dtype=np.uint64))
        n = len(vals)
        part_sizes = [max(0, int(s)) for s in sizes(group, n)]
        if sum(part_sizes) > n:
            raise ValueError(f"parts of group {group!r} ask for {sum(part_sizes)} records, it has {n}")
        thresholds: list[tuple[int, str]] = []
        position = 0
        for i, s in enumerate(part_sizes):
            position += s
            if position >= n:
                thresholds.append((_TOP, ""))
            elif position == 0:
                thresholds.append((-1, ""))
            else:
                v = int(vals[position])
                thresholds.append((v, ""))
                if int(vals[position - 1]) == v:
                    pending.setdefault(group, []).append((i, position))
                    sorted_values[group] = vals
        cuts.thresholds[group] = thresholds
        cuts.sizes[group] = part_sizes
    if pending:
        _break_ties(cuts, items, pending, sorted_values)
    return cuts


def _break_ties(cuts: Cuts, items, pending, sorted_values) -> None:
    """Thresholds whose rank value is shared by keys on both sides of the cut: order those keys by
    the key itself and take the one at the cut's position."""
    wanted = {g: {cuts.thresholds[g][i][0] for i, _ in cut_list} for g, cut_list in pending.items()}
    tied: dict[tuple[Hashable, int], list[str]] = {}
    for item in items():
        key, group = item[0], item[1]
        values = wanted.get(group)
        if values:
            v = item[2] if len(item) > 2 else cuts.value(cuts.seed, key)
            if v in values:
                tied.setdefault((group, v), []).append(key)
    for group, cut_list in pending.items():
        vals = sorted_values[group]
        for i, position in cut_list:
            v = cuts.thresholds[group][i][0]
            below = int(np.searchsorted(vals, np.uint64(v), side="left"))
            keys = sorted(tied[(group, v)])
            cuts.thresholds[group][i] = (v, keys[position - below])


def key_clashes(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """(key, name) pairs -> {name: owner} for every name whose key another name has too, the owner
    being the first of them in sorted order (it keeps the key; the others cannot be samples)."""
    pairs = list(items)
    owners: dict[str, str] = {}
    for key, name in pairs:
        owners[key] = min(owners.get(key, name), name)
    return {name: owners[key] for key, name in pairs if owners[key] != name}


def choose(names: Iterable[str], seed: int | str, count: int, salt: str = "") -> list[str]:
    """`count` names out of `names`, chosen by rank value (sorted by name in the result)."""
    unique = sorted(set(names))
    ranked = sorted(unique, key=lambda k: (rank_value(seed, salt + k), k))
    return sorted(ranked[:count])


TEST_SPLIT = re.compile(r"test([_-].*)?")  # test, test_seen, test-hard: held-out data


def check_split_name(name: str) -> None:
    """Split names become shard file names (`<split>-000000.tar`) and SQL values: keep them plain."""
    if make_key(name) != name:
        raise UserError(f"split name {name!r} must be lower-case letters, digits, '_' or '-'")


def parse_named_fractions(text: str) -> list[tuple[str, float]]:
    """'train=0.9,val=0.1' -> [('train', 0.9), ('val', 0.1)], checked."""
    parts: list[tuple[str, float]] = []
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not name or not 0 <= frac <= 1:
            raise UserError(f"--splits takes NAME=FRACTION pairs like train=0.9,val=0.1; got {item!r}")
        check_split_name(name)
        if frac == 0:  # the split would be missing from the output, not empty
            raise UserError(f"--splits gives split {name!r} the fraction 0; leave it out")
        parts.append((name, frac))
    if len({n for n, _ in parts}) != len(parts):
        raise UserError(f"--splits names a split twice: {text}")
    if sum(f for _, f in parts) > 1 + 1e-9:
        raise UserError(f"--splits fractions add up to more than 1: {text}")
    return parts


def check_fraction(value: float | None, option: str) -> float:
    if value is None:
        raise UserError(f"{option} is needed (a fraction in (0, 1])")
    if not 0 < value <= 1:
        raise UserError(f"{option} must be a fraction in (0, 1], got {value}")
    return value
