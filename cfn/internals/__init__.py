"""Every private attribute of aiokafka and uvicorn that cfn uses, in one place, checked at start.

cfn reaches past the public APIs where they lack what it needs:

* aiokafka's record accumulator (`AIOKafkaProducer._message_accumulator`): a closed task's
  producer fails its pending records at once instead of retrying them forever;
* a transactional producer's transaction manager (`_txn_manager._transaction_waiter`): the
  error that broke the transaction (a refused topic), which later steps report only as
  IllegalOperation;
* the consumer's client (`_client`): a fresh metadata round trip (the consumer's own view is
  lazy);
* the consumer's group coordinator (`_coordinator`): the committed offsets of many partitions in
  one request, stable ones (`committed()` asks once per partition, and with OffsetFetch v1-v3,
  which has no require_stable), its generation and member id, and asking for a rebalance;
* a transactional producer's sender (`_sender._do_txn_offset_commit`): one producer per worker
  commits offsets with TxnOffsetCommit v3 and the group metadata (KIP-447, `protocol` here);
* uvicorn's server state and protocol construction (ingest/http.py plugs into them), and its
  process supervisor (`ingest_supervisor`: SIGHUP passed on instead of restarting);
* aiokafka modules that are not its public API, re-exported from here: `BatchBuilder` (a
  task's records batched by hand), `collect_hosts` and `create_conn` (one bare connection, the
  access probe); and used here: `ConfigResource` (`topic_configs`, a topic's retention).

No other module imports a non-public module of aiokafka or uvicorn (tests/test_layout.py).

aiokafka and uvicorn are pinned to the minor versions the tests cover (pyproject.toml). `check`
runs when a process starts and fails it with a message naming what moved, rather than a request
failing later; tests/test_internals.py fails when any of it moves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from importlib import metadata
from typing import Any

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import collect_hosts as collect_hosts
from aiokafka.conn import create_conn as create_conn
from aiokafka.errors import (
    CoordinatorNotAvailableError,
    GroupAuthorizationFailedError,
    KafkaError,
    NotCoordinatorError,
    UnknownMemberIdError,
    for_code,
)
from aiokafka.producer.message_accumulator import BatchBuilder as BatchBuilder
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.structs import TopicPartition

from cfn.internals.protocol import (
    STALE_MEMBER,
    UNSTABLE_OFFSET_COMMIT,
    ListOpenTransactions,
    OffsetFetchV7,
    TxnOffsetCommitV3,
)

try:  # subclassed below, so needed at import: named like every other internal if it moved
    from aiokafka.producer.sender import TxnOffsetCommitHandler
except ImportError as exc:  # pragma: no cover - only with an untested aiokafka
    raise ImportError(
        "aiokafka.producer.sender has no `TxnOffsetCommitHandler` (an internal cfn uses: see "
        "cfn/internals/ for the aiokafka version it is tested with)"
    ) from exc

log = logging.getLogger("cfn.worker")  # fetch_committed's one warning

RETRY_BACKOFF = 0.1  # seconds between two asks of a group coordinator that is not ready
# Seconds of UNSTABLE_OFFSET_COMMIT answers before fetch_committed asks whether any transaction
# is still open: a transaction ends within a second of its commit or abort, and an open one is
# listed as open, so this only spaces the questions (and stays under the worker's 30 s bound on
# opening tasks).
ORPHAN_CHECK = 10.0

# The minor versions whose internals these adapters were written and tested against.
TESTED = {"aiokafka": "0.14", "uvicorn": "0.54"}


class InternalsError(RuntimeError):
    """An aiokafka or uvicorn internal cfn relies on is missing: the message says which."""


def check_versions() -> None:
    """Raises InternalsError when an installed version is not the tested minor version."""
    for package, minor in TESTED.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise InternalsError(f"{package} is not installed (cfn needs {minor}.x)") from None
        if installed != minor and not installed.startswith(minor + "."):
            raise InternalsError(
                f"{package} {installed} is installed, but cfn is tested with {minor}.x and uses "
                f"its internals (cfn/internals); install {package}=={minor}.*"
            )


def _need(obj: Any, path: str, owner: str) -> Any:
    value = obj
    for name in path.split("."):
        if not hasattr(value, name):
            raise InternalsError(
                f"{owner} has no `{path}` (an internal cfn uses; tested with "
                f"aiokafka {TESTED['aiokafka']}.x, uvicorn {TESTED['uvicorn']}.x)"
            )
        value = getattr(value, name)
    return value


def check_transactional(producer: Any) -> None:
    """The internals the worker uses exist on a transactional producer: the transaction
    manager it reads, and the accumulator `abandon` empties."""
    _need(producer, "_txn_manager._transaction_waiter", "AIOKafkaProducer (transactional)")
    for name in ("fail_all", "_batches", "_pending_batches"):
        _need(producer, f"_message_accumulator.{name}", "AIOKafkaProducer (transactional)")


def check_group_transactions(producer: Any, consumer: Any) -> None:
    """What one producer per worker (KIP-447, `commit_offsets_as_member`) uses exists."""
    from aiokafka.producer import sender

    _need(producer, "_sender._do_txn_offset_commit", "AIOKafkaProducer (transactional)")
    _need(producer, "_sender._find_coordinator", "AIOKafkaProducer (transactional)")
    _need(sender, "TxnOffsetCommitHandler.handle_response", "aiokafka.producer.sender")
    _need(sender, "CoordinationType.GROUP", "aiokafka.producer.sender")
    for name in ("generation", "member_id"):
        _need(consumer, f"_coordinator.{name}", "AIOKafkaConsumer")


def check_admin(admin: Any) -> None:
    """The admin client internals `ensure_topics` uses exist on `admin`."""
    _need(admin, "_client.fetch_all_metadata", "AIOKafkaAdminClient")
    _need(admin, "_client.send", "AIOKafkaAdminClient")


def check_consumer(consumer: Any) -> None:
    """Every consumer internal cfn uses exists on `consumer` (after start: the coordinator)."""
    _need(consumer, "_client.fetch_all_metadata", "AIOKafkaConsumer")
    if getattr(consumer, "_group_id", None) is not None:
        _need(consumer, "_coordinator.request_rejoin", "AIOKafkaConsumer")
        for name in ("_send_req", "ensure_coordinator_known", "coordinator_dead", "group_id"):
            _need(consumer, f"_coordinator.{name}", "AIOKafkaConsumer")


def check_server() -> None:
    """What ingest/http.py takes from uvicorn's server: the state its protocols share (the
    open connections, their shutdown, the date header) and the settings it reads."""
    import inspect

    from uvicorn.config import Config
    from uvicorn.server import Server, ServerState

    state = ServerState()
    for name in ("connections", "tasks", "default_headers", "total_requests"):
        _need(state, name, "uvicorn's ServerState")
    config = Config(app=_no_app)
    for name in ("timeout_keep_alive", "load"):
        _need(config, name, "uvicorn's Config")
    source = inspect.getsource(Server.startup)
    for argument in ("config=config", "server_state=self.server_state"):
        if argument not in source:
            raise InternalsError(f"uvicorn's Server no longer builds protocols with {argument}")


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """A placeholder ASGI app for check_server's Config."""


# ---- producer ---------------------------------------------------------------------------------


def transaction_error(producer: Any) -> BaseException | None:
    """What broke a transactional producer's current transaction, e.g. a topic it may not
    write (AddPartitionsToTxn refused): aiokafka keeps it in its transaction manager and
    reports every later step only as IllegalOperation. None when nothing did."""
    manager = getattr(producer, "_txn_manager", None)
    waiter = getattr(manager, "_transaction_waiter", None)
    if waiter is None or not waiter.done() or waiter.cancelled():
        return None
    error: BaseException | None = waiter.exception()
    return error


def abandon(producer: Any, exc: BaseException) -> None:
    """Fail every record the producer still holds with `exc`, so that stopping it is immediate
    (an idempotent producer otherwise retries them until the broker takes them). `exc` is the
    caller's to report: the futures it fails are marked retrieved, or asyncio would log each
    one as an error when it is collected."""
    accumulator = producer._message_accumulator
    batches = [batch for held in accumulator._batches.values() for batch in held]
    batches += list(accumulator._pending_batches)
    accumulator.fail_all(exc)
    for batch in batches:
        futures = [batch.future, batch._drain_waiter]
        futures += [future for future, _ in batch._msg_futures]
        for future in futures:
            if future.done() and not future.cancelled():
                future.exception()


def commit_offsets_as_member(producer: Any, consumer: Any) -> None:
    """Make the producer's `send_offsets_to_transaction` send TxnOffsetCommit v3 with the
    consumer's group generation and member id as they are when the request is built (KIP-447):
    the group coordinator then refuses the offsets of a member that lost its partitions, and
    the transaction fails (IllegalGenerationError, UnknownMemberIdError) instead of committing
    for partitions now owned by another worker. aiokafka builds only v0 and has no option for
    this, so the producer's sender gets its offset-commit step replaced."""
    from aiokafka.producer.sender import CoordinationType

    sender = producer._sender
    coordinator = consumer._coordinator

    async def txn_offset_commit(offsets: Any, group_id: str) -> None:
        if not offsets:
            return
        if coordinator.generation < 0 or not coordinator.member_id:
            # Not a member (expelled, rejoining): the broker would take the offsets as from
            # outside the group, unchecked. Whatever this transaction processed may have moved.
            sender._txn_manager.error_transaction(
                UnknownMemberIdError("not a member of the group: its partitions may have moved")
            )
            return
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        except GroupAuthorizationFailedError as exc:
            sender._txn_manager.error_transaction(exc)
            return
        await MemberTxnOffsetCommit(sender, offsets, group_id, coordinator).do(node_id)

    sender._do_txn_offset_commit = txn_offset_commit


class MemberTxnOffsetCommit(TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's handler, with the v3 request and its stale-member answers; one class for every
    commit, so that no commit round leaves a reference cycle behind."""

    def __init__(self, sender: Any, offsets: Any, group_id: str, coordinator: Any) -> None:
        super().__init__(sender, offsets, group_id)
        self._coordinator = coordinator

    def create_request(self) -> TxnOffsetCommitV3:
        txn = self._sender._txn_manager
        by_topic: dict[str, list[tuple[int, int, str]]] = {}
        for tp, meta in sorted(self._offsets.items()):
            by_topic.setdefault(tp.topic, []).append((tp.partition, meta.offset, meta.metadata))
        return TxnOffsetCommitV3(
            txn.transactional_id,
            self._group_id,
            txn.producer_id,
            txn.producer_epoch,
            self._coordinator.generation,
            self._coordinator.member_id,
            list(by_topic.items()),
        )

    def handle_response(self, resp: Any) -> float | None:
        txn = self._sender._txn_manager
        for topic, partitions, _tags in resp.topics:
            for partition, code, _tags in partitions:
                tp = TopicPartition(topic, partition)
                if code == 0:
                    txn.offset_committed(tp, self._offsets[tp].offset, self._group_id)
                elif code in STALE_MEMBER:
                    txn.error_transaction(
                        for_code(code)(
                            f"the group refused the offsets of generation "
                            f"{self._coordinator.generation}: its partitions have moved on"
                        )
                    )
                    return None
                else:  # every other code means what it means for v0: aiokafka's handling
                    backoff: float | None = super().handle_response(
                        _V0Answer([(topic, [(partition, code)])])
                    )
                    if backoff is not None:
                        return backoff
        return None


class _V0Answer:
    """The shape of a TxnOffsetCommit v0 response, for aiokafka's handler."""

    def __init__(self, errors: list[tuple[str, list[tuple[int, int]]]]) -> None:
        self.errors = errors


# ---- consumer ---------------------------------------------------------------------------------


async def fetch_metadata(client_owner: Any) -> Any:
    """A fresh metadata round trip through a consumer's or admin client's own connections."""
    return await client_owner._client.fetch_all_metadata()


async def list_offsets_errors(client_owner: Any, node_id: int, partitions: list[Any]) -> list[Any]:
    """The partitions whose leader `node_id` cannot answer a ListOffsets for them yet (a new
    topic's partitions, before the broker has made itself their leader)."""
    topics: dict[str, list[tuple[int, int]]] = {}
    for tp in partitions:
        topics.setdefault(tp.topic, []).append((tp.partition, -1))
    response = await client_owner._client.send(node_id, OffsetRequest(-1, 0, list(topics.items())))
    return [
        TopicPartition(topic, partition)
        for topic, answers in response.topics
        for partition, error_code, *_ in answers
        if error_code != 0
    ]


async def topic_configs(admin: Any, topic: str) -> dict[str, str | None]:
    """A topic's configuration as the broker applies it (its own settings and the defaults),
    through an AIOKafkaAdminClient; needs DESCRIBE_CONFIGS on the topic. aiokafka's
    ConfigResource lives in a module outside its public API.

    Raises:
        KafkaError: the broker's refusal (TopicAuthorizationFailedError without the ACL).
    """
    (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    (resource,) = response.resources
    error_code, message, _type, _name, entries, *_ = resource
    if error_code:
        raise for_code(error_code)(message or topic)
    return {entry[0]: entry[1] for entry in entries}


def group_generation(consumer: Any) -> int:
    """The generation of the consumer's group membership (-1 when not a member)."""
    generation: int = consumer._coordinator.generation
    return generation


def request_rejoin(consumer: Any) -> None:
    """Ask the group for a rebalance (no public call exists)."""
    consumer._coordinator.request_rejoin()


async def fetch_committed(
    consumer: Any, partitions: list[Any], *, owners: str, orphan_check: float = ORPHAN_CHECK
) -> dict[Any, int]:
    """The group's committed offsets of `partitions` (-1: none), in one request, once no
    transaction holds pending offsets for them (OffsetFetch v7, require_stable, KIP-447): a
    new owner then starts where the previous owner's last transaction left off, whether that
    transaction was still to commit or abort when the partitions moved.

    `owners` is the transactional id prefix of every producer that commits offsets for the
    group. Kafka's group coordinator can keep answering UNSTABLE_OFFSET_COMMIT for pending
    offsets whose transaction has ended (seen with Kafka 4.4 after every worker was killed and
    then two of three brokers: docs/reliability.md). So after `orphan_check` seconds of such
    answers the transaction coordinators are asked: when every broker answers and lists no
    open transaction of `owners`, no transaction can still decide those offsets, and the
    committed ones are read without require_stable (logged as a warning).
    """
    coordinator = consumer._coordinator
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    topics = sorted(by_topic.items())
    require_stable = True
    unstable_since: float | None = None
    while True:
        await coordinator.ensure_coordinator_known()
        request = OffsetFetchV7(coordinator.group_id, topics, require_stable)
        try:
            response = await coordinator._send_req(request)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            await asyncio.sleep(RETRY_BACKOFF)
            continue
        codes = {response.error_code}
        offsets: dict[Any, int] = {}
        for topic, answers, _tags in response.topics:
            for partition, offset, _epoch, _meta, code, _tags in answers:
                codes.add(code)
                offsets[TopicPartition(topic, partition)] = offset
        codes.discard(0)
        if not codes:
            return offsets
        if codes <= {UNSTABLE_OFFSET_COMMIT}:  # a transaction is still to end: ask again
            now = time.monotonic()
            if unstable_since is None:
                unstable_since = now
            elif now - unstable_since >= orphan_check:
                unstable_since = now
                if await no_open_transactions(consumer, owners):
                    log.warning(
                        "group %s: pending offsets of %d partition(s) belong to no open "
                        "transaction of %s* on any broker; reading its committed offsets "
                        "without waiting for them",
                        coordinator.group_id,
                        len(partitions),
                        owners,
                    )
                    require_stable = False
                    continue
            await asyncio.sleep(RETRY_BACKOFF)
            continue
        error = for_code(min(codes))
        if error in (NotCoordinatorError, CoordinatorNotAvailableError):
            coordinator.coordinator_dead()
        elif not error.retriable:
            raise error(coordinator.group_id)
        await asyncio.sleep(RETRY_BACKOFF)


async def no_open_transactions(client_owner: Any, owners: str) -> bool:
    """True when every broker in fresh metadata answers ListTransactions without an error and
    none lists an open transaction whose id starts with `owners`. False when one does, or when
    a broker cannot tell (down, loading its coordinator partitions): the answer must be
    complete to mean "none"."""
    cluster = await client_owner._client.fetch_all_metadata()
    brokers = [broker.nodeId for broker in cluster.brokers()]
    if not brokers:
        return False
    answers = await asyncio.gather(
        *(client_owner._client.send(node, ListOpenTransactions()) for node in brokers),
        return_exceptions=True,
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            if isinstance(answer, (KafkaError, OSError, asyncio.TimeoutError)):
                return False
            raise answer
        if answer.error_code != 0:
            return False
        for transactional_id, _producer, _state, _tags in answer.transaction_states:
            if transactional_id.startswith(owners):
                return False
    return True


def ingest_supervisor(log: logging.Logger) -> Any:
    """uvicorn's process supervisor, except that SIGHUP is passed on to every process (each
    reloads its own secrets and certificate) instead of restarting them all."""
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Supervisor(Multiprocess):  # type: ignore[misc]
        def handle_hup(self) -> None:
            for process in self.processes:
                pid = process.process.pid
                if pid is not None and process.process.is_alive():
                    os.kill(pid, signal.SIGHUP)
            log.warning("SIGHUP passed on to %d ingest process(es)", len(self.processes))

    return Supervisor
