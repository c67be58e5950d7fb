"""The nemesis's schedule: which faults, when, for how long and against what, drawn from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Each kind's weight in the draw. The four network kinds act through Toxiproxy on the links of
# every client to the chosen brokers; the rest act on processes with signals.
WEIGHTS: dict[str, int] = {
    "partition": 1,  # proxy disabled: connections closed, new ones refused
    "latency": 1,  # latency toxic, both directions
    "blackhole": 1,  # timeout toxic with no timeout: open, carries nothing; reset at the end
    "slow": 1,  # bandwidth toxic
    "hang_broker": 1,  # SIGSTOP one node past the broker session timeout, then SIGCONT
    "quorum_loss": 1,  # two of three nodes stopped (SIGTERM or SIGKILL), then started
    "ingest_kill": 1,  # SIGKILL an ingest under load, restarted after a pause
    "worker_kill": 1,  # SIGKILL a worker; sometimes again while it restores
    "workers_crash": 1,  # SIGKILL two or three workers at once
    "worker_stall": 1,  # SIGSTOP a worker past the session timeout, then SIGCONT
    "scale_in": 1,  # SIGTERM a worker (the group shrinks), started again later
}
# Seconds a target stays claimed after a fault's end: a node or a process restarted by it
# takes that long to be back here, and the next fault on it should meet it up.
SETTLE_AFTER: dict[str, float] = {"quorum_loss": 25.0, "hang_broker": 10.0}
PROCESS_SETTLE = 8.0
NETWORK = ("partition", "latency", "blackhole", "slow")


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule.

    Attributes:
        kind: a key of WEIGHTS.
        at: seconds after the load started.
        duration: seconds until it is healed (for a kill: until the restart).
        targets: brokers (1-based node ids), or ingest / worker indexes (0-based).
        params: the kind's own numbers (latency_ms, rate_kbps, again_after, kill).
    """

    kind: str
    at: float
    duration: float
    targets: tuple[int, ...]
    params: dict[str, float] = field(default_factory=dict)

    def claims(self) -> list[str]:
        if self.kind in NETWORK:
            return [f"proxy:{t}" for t in self.targets]
        if self.kind in ("hang_broker", "quorum_loss"):
            return [f"broker:{t}" for t in self.targets]
        if self.kind == "ingest_kill":
            return [f"ingest:{t}" for t in self.targets]
        return [f"worker:{t}" for t in self.targets]

    @property
    def busy_until(self) -> float:
        settle = SETTLE_AFTER.get(self.kind, 1.0 if self.kind in NETWORK else PROCESS_SETTLE)
        return self.at + self.duration + self.params.get("again_after", 0.0) + settle

    def describe(self) -> str:
        what = {
            "partition": "brokers",
            "latency": "brokers",
            "blackhole": "brokers",
            "slow": "brokers",
            "hang_broker": "node",
            "quorum_loss": "nodes",
            "ingest_kill": "ingest",
        }.get(self.kind, "workers" if len(self.targets) > 1 else "worker")
        extra = " ".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))
        targets = ",".join(map(str, self.targets))
        when = f"t+{self.at:5.1f}s {self.kind:<13}"
        return f"{when} {what} {targets} for {self.duration:.1f}s {extra}".rstrip()


def _draw_one(
    rng: random.Random, kind: str, at: float, brokers: int, ingests: int, workers: int
) -> Fault:
    if kind in NETWORK:
        targets = tuple(sorted(rng.sample(range(1, brokers + 1), rng.randint(1, brokers))))
        duration = {"partition": (2, 12), "latency": (5, 20), "blackhole": (3, 12), "slow": (5, 15)}
        params: dict[str, float] = {}
        if kind == "latency":
            params["latency_ms"] = float(rng.choice((100, 250, 500, 1000, 2000)))
        if kind == "slow":
            params["rate_kbps"] = float(rng.choice((2, 8, 32)))
        return Fault(kind, at, round(rng.uniform(*duration[kind]), 1), targets, params)
    if kind == "hang_broker":
        return Fault(kind, at, round(rng.uniform(11, 18), 1), (rng.randint(1, brokers),))
    if kind == "quorum_loss":
        nodes = tuple(sorted(rng.sample(range(1, brokers + 1), 2)))
        return Fault(
            kind, at, round(rng.uniform(4, 12), 1), nodes, {"kill": float(rng.random() < 0.5)}
        )
    if kind == "ingest_kill":
        return Fault(kind, at, round(rng.uniform(1, 5), 1), (rng.randrange(ingests),))
    if kind == "worker_kill":
        again = round(rng.uniform(0.3, 3.0), 1) if rng.random() < 0.5 else 0.0
        params = {"again_after": again} if again else {}
        return Fault(kind, at, round(rng.uniform(1, 5), 1), (rng.randrange(workers),), params)
    if kind == "workers_crash":
        chosen = tuple(sorted(rng.sample(range(workers), rng.randint(2, workers))))
        return Fault(kind, at, round(rng.uniform(1, 5), 1), chosen)
    if kind == "worker_stall":
        return Fault(kind, at, round(rng.uniform(12, 20), 1), (rng.randrange(workers),))
    if kind == "scale_in":
        return Fault(kind, at, round(rng.uniform(8, 20), 1), (rng.randrange(workers),))
    raise ValueError(f"unknown fault kind {kind!r}")


def draw(
    seed: int, duration: float, *, brokers: int = 3, ingests: int = 2, workers: int = 3
) -> list[Fault]:
    """The schedule of one run: about one fault per 6 s of load, starting from t+5 s and
    healed by the load's end. Faults overlap freely unless they claim the same proxy, node or
    process (then the later draw is moved, or dropped after 20 tries). Same seed, same list.
    """
    rng = random.Random(seed)
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    faults: list[Fault] = []
    for _ in range(max(1, int(duration / 6))):
        kind = rng.choices(kinds, weights)[0]
        for _attempt in range(20):
            at = round(rng.uniform(5.0, max(6.0, duration - 10.0)), 1)
            fault = _draw_one(rng, kind, at, brokers, ingests, workers)
            if fault.at + fault.duration > duration:
                continue
            clash = any(
                set(fault.claims()) & set(other.claims())
                and fault.at < other.busy_until
                and other.at < fault.busy_until
                for other in faults
            )
            if not clash:
                faults.append(fault)
                break
    return sorted(faults, key=lambda f: f.at)
