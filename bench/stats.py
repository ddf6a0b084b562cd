"""Latency histograms and delivery counters that load processes fill and the runner merges.

Latencies go into log-spaced buckets 1 % wide, so a load process ships a few hundred numbers
instead of millions of samples, and percentiles are exact to within 1 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BUCKETS_PER_E = 100  # bucket width: a factor of e**(1/100), about 1 %


@dataclass
class Histogram:
    """Counts of latencies in microseconds, by log bucket, plus the exact maximum."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    max_us: float = 0.0

    def add(self, us: float) -> None:
        bucket = int(math.log(us) * BUCKETS_PER_E) if us > 1.0 else 0
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.total += 1
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, p: float) -> float:
        """The latency (µs) below which a fraction `p` of the samples lie; 0 when empty."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(p * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                upper = math.exp((bucket + 1) / BUCKETS_PER_E)
                return min(upper, self.max_us)
        return self.max_us


@dataclass
class Delivery:
    """What the clients of one transport saw: events counted per client, then summed."""

    clients: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    disconnected: int = 0
    latency: Histogram = field(default_factory=Histogram)
    worst_by_event: dict[int, int] = field(default_factory=dict)  # seq -> longest wait of any client (µs)
    disorder: list[tuple[int, int, int]] = field(default_factory=list)  # examples: (seq, after seq, received)
    missing_examples: dict[int, int] = field(default_factory=dict)  # seq -> clients (of a sample) without it

    def merge(self, other: Delivery) -> None:
        for seq, us in other.worst_by_event.items():
            if us > self.worst_by_event.get(seq, 0):
                self.worst_by_event[seq] = us
        self.clients += other.clients
        self.received += other.received
        for seq, count in other.missing_examples.items():
            self.missing_examples[seq] = self.missing_examples.get(seq, 0) + count
        self.disorder.extend(other.disorder[: max(0, 20 - len(self.disorder))])
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.out_of_order += other.out_of_order
        self.disconnected += other.disconnected
        self.latency.merge(other.latency)
