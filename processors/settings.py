"""The worker's settings: one frozen object built from CFN_* variables."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

from cfn.config import (
    COMPRESSIONS,
    TRANSACTIONS,
    ConfigError,
    Env,
    parse_duration,
    topic_names,
)
from cfn.processors.anomaly import AnomalyPolicy
from cfn.processors.flapping import FlapPolicy
from cfn.security import PLAINTEXT, KafkaSecurity


def default_state_dir() -> str:
    """CFN_STATE_DIR's default: `cfn` in the temporary directory (Kafka Streams' state.dir is
    likewise under java.io.tmpdir)."""
    return os.path.join(tempfile.gettempdir(), "cfn")


def _per_type(name: str, text: str | None) -> dict[str, float]:
    """Parse "type_a=1h,type_b=30m" into {"type_a": 3600.0, "type_b": 1800.0}."""
    result: dict[str, float] = {}
    if not text:
        return result
    for item in text.split(","):
        if not item.strip():
            continue
        alert_type, sep, duration = item.partition("=")
        if not sep or not alert_type.strip():
            raise ConfigError(f"{name}: expected alert_type=duration, got {item!r}")
        try:
            result[alert_type.strip()] = parse_duration(duration)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return result


@dataclass(frozen=True)
class WorkerSettings:
    """Everything `cfn worker` reads (docs/operations.md, "Configuration", has the table)."""

    app_id: str = "cfn"
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "cfn."
    partitions: int = 12
    replication: int = 1
    commit_interval: float = 0.1
    # When set (> 0), commit rounds are spaced so that they write at most this many
    # transactions a second. Off by default: it does not raise throughput over many partitions
    # (the cost of a round is per partition, not per transaction: docs/design.md) and it
    # stretches visibility latency.
    max_transactions: float = 0.0
    # Who writes the transactions (processors/transactions.py): one producer per worker, fenced
    # by the group generation (KIP-447, "worker"): one transaction per commit round however
    # many partitions it owns; or one per partition, fenced by its transactional id
    # ("partition").
    # "worker" is the default for its throughput and latency (docs/design.md, "Exactly once"),
    # as Kafka Streams' exactly_once_v2 is.
    transactions: str = TRANSACTIONS[0]
    # The worker's part of its transactional id in "worker" mode: unique among live workers.
    # Empty: `cfn worker` keeps one per slot of `state_dir` (processors/identity.py), so that a
    # restarted worker aborts its previous incarnation's open transaction at once instead of
    # after the transaction timeout; an engine built without one takes a random one.
    worker_id: str = ""
    # Where `cfn worker` keeps its worker id between restarts (processors/identity.py).
    state_dir: str = field(default_factory=default_state_dir)
    session_timeout: float = 15.0
    # SIGTERM to exit, whatever Kafka does: the last commit (COMMIT_TIMEOUT) and leaving the
    # group get this long, then the process exits (keep it under the pod's grace period).
    shutdown_timeout: float = 45.0
    dedup_window: float = 24 * 3600.0
    orphan_end_hold: float = 600.0
    stale_after: float = 24 * 3600.0
    stale_after_by_type: Mapping[str, float] = field(default_factory=dict)
    incident_state_retention: float = 7 * 24 * 3600.0
    rate_windows: tuple[int, ...] = (60, 300, 3600)
    rate_lateness: int = 120
    rate_idle_after: float = 5.0
    anomaly: AnomalyPolicy = field(default_factory=AnomalyPolicy)
    flap: FlapPolicy = field(default_factory=FlapPolicy)
    tick_interval: float = 1.0
    dlq_alarm_ratio: float = 0.05
    dlq_alarm_sample: int = 1000
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # zstd, not lz4: aiokafka's lz4 compresses at level 9 (LZ4 HC), which is slower than zstd's
    # default level and compresses less; every Kafka client since 2.1 reads zstd.
    compression: str = "zstd"
    security: KafkaSecurity = PLAINTEXT

    def topic(self, role: str) -> str:
        return topic_names(self.topic_prefix)[role]

    def stale_after_for(self, alert_type: str | None) -> float:
        if alert_type is not None:
            override = self.stale_after_by_type.get(alert_type)
            if override is not None:
                return override
        return self.stale_after

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        environ = os.environ if environ is None else environ
        env = Env(environ)
        windows = env.durations("CFN_RATE_WINDOWS", (60.0, 300.0, 3600.0))
        if any(w != int(w) for w in windows):
            raise ConfigError("CFN_RATE_WINDOWS must be whole seconds")
        rate_windows = tuple(sorted(int(w) for w in windows))
        return cls(
            app_id=env.text("CFN_APP_ID", cls.app_id),
            bootstrap=env.text("CFN_KAFKA_BOOTSTRAP", cls.bootstrap),
            topic_prefix=env.text("CFN_TOPIC_PREFIX", cls.topic_prefix),
            partitions=env.integer("CFN_PARTITIONS", cls.partitions, minimum=1),
            replication=env.integer("CFN_REPLICATION", cls.replication, minimum=1),
            commit_interval=env.duration("CFN_COMMIT_INTERVAL", cls.commit_interval),
            max_transactions=env.number(
                "CFN_MAX_TRANSACTIONS_PER_S", cls.max_transactions, minimum=0.0
            ),
            transactions=env.choice("CFN_TRANSACTIONS", cls.transactions, TRANSACTIONS),
            worker_id=env.raw("CFN_WORKER_ID") or "",
            state_dir=env.text("CFN_STATE_DIR", default_state_dir()),
            session_timeout=env.duration("CFN_SESSION_TIMEOUT", cls.session_timeout),
            shutdown_timeout=env.duration("CFN_WORKER_SHUTDOWN_TIMEOUT", cls.shutdown_timeout),
            dedup_window=env.duration("CFN_DEDUP_WINDOW", cls.dedup_window),
            orphan_end_hold=env.duration("CFN_ORPHAN_END_HOLD", cls.orphan_end_hold),
            stale_after=env.duration("CFN_INCIDENT_STALE_AFTER", cls.stale_after),
            stale_after_by_type=_per_type(
                "CFN_INCIDENT_STALE_AFTER_BY_TYPE", env.raw("CFN_INCIDENT_STALE_AFTER_BY_TYPE")
            ),
            incident_state_retention=env.duration(
                "CFN_INCIDENT_STATE_RETENTION", cls.incident_state_retention
            ),
            rate_windows=rate_windows,
            rate_lateness=int(env.duration("CFN_RATE_LATENESS", cls.rate_lateness)),
            rate_idle_after=env.duration("CFN_RATE_IDLE_AFTER", cls.rate_idle_after),
            anomaly=_anomaly_policy(env, rate_windows),
            flap=FlapPolicy(
                min_cycles=env.integer("CFN_FLAP_MIN_CYCLES", FlapPolicy.min_cycles, minimum=2),
                window_s=int(env.duration("CFN_FLAP_WINDOW", FlapPolicy.window_s)),
                quiet_s=int(env.duration("CFN_FLAP_QUIET", FlapPolicy.quiet_s)),
            ),
            tick_interval=env.duration("CFN_TICK_INTERVAL", cls.tick_interval),
            dlq_alarm_ratio=env.number("CFN_DLQ_ALARM_RATIO", cls.dlq_alarm_ratio),
            dlq_alarm_sample=env.integer("CFN_DLQ_ALARM_SAMPLE", cls.dlq_alarm_sample, minimum=1),
            metrics_host=env.text("CFN_WORKER_METRICS_HOST", cls.metrics_host),
            metrics_port=env.integer("CFN_WORKER_METRICS_PORT", cls.metrics_port),
            compression=env.choice("CFN_WORKER_COMPRESSION", cls.compression, COMPRESSIONS),
            security=KafkaSecurity.from_env(environ),
        )


def _anomaly_policy(env: Env, rate_windows: tuple[int, ...]) -> AnomalyPolicy:
    """CFN_ANOMALY_*: the window judged must be one of the rate windows (default 5m if it is
    one, else the smallest)."""
    d = AnomalyPolicy()
    default_window = d.window_s if d.window_s in rate_windows else rate_windows[0]
    window = env.duration("CFN_ANOMALY_WINDOW", default_window)
    if window not in rate_windows:
        choices = ", ".join(map(str, rate_windows))
        raise ConfigError(
            f"CFN_ANOMALY_WINDOW must be one of CFN_RATE_WINDOWS ({choices} s), got {window:g} s"
        )
    span = env.integer("CFN_ANOMALY_SPAN", d.span, minimum=1)
    policy = AnomalyPolicy(
        window_s=int(window),
        factor=env.number("CFN_ANOMALY_FACTOR", d.factor, minimum=1.0),
        min_count=env.integer("CFN_ANOMALY_MIN_COUNT", d.min_count, minimum=1),
        span=span,
        warmup=env.integer("CFN_ANOMALY_WARMUP", span, minimum=0),
        floor=env.number("CFN_ANOMALY_FLOOR", d.floor),
        clear_factor=env.number("CFN_ANOMALY_CLEAR_FACTOR", d.clear_factor),
        clear_windows=env.integer("CFN_ANOMALY_CLEAR_WINDOWS", d.clear_windows, minimum=1),
    )
    if policy.clear_factor >= policy.factor:
        raise ConfigError(
            f"CFN_ANOMALY_CLEAR_FACTOR ({policy.clear_factor:g}) must be below CFN_ANOMALY_FACTOR"
            f" ({policy.factor:g}): that gap is the hysteresis"
        )
    return policy
