"""Every private attribute of aiokafka and uvicorn that cfn uses, in one place, checked at start.

cfn reaches past the public APIs where they lack what it needs:

* aiokafka's record accumulator (`AIOKafkaProducer._message_accumulator`): the ingest's sends
  skip `send()`'s per-record metadata wait and size estimate, and a replaced producer's pending
  records are failed at once instead of retried forever;
* the producer's sender task (`_sender.sender_task`): when it has died the producer is dead for
  good, and nothing public says so;
* a transactional producer's transaction manager (`_txn_manager._transaction_waiter`): the
  error that broke the transaction (a refused topic), which later steps report only as
  IllegalOperation;
* the consumer's client (`_client`): a fresh metadata round trip (the consumer's own view is
  lazy);
* the consumer's group coordinator (`_coordinator`): the committed offsets of many partitions in
  one request (`committed()` asks once per partition), and asking for a rebalance;
* uvicorn's httptools protocol (ingest/protocol.py subclasses it).

aiokafka and uvicorn are pinned to the minor versions the tests cover (pyproject.toml). `check`
runs when a process starts and fails it with a message naming what moved, rather than a request
failing later; tests/test_internals.py fails when any of it moves.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

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


def check_producer(producer: Any) -> None:
    """Every producer internal cfn uses exists on `producer` (not started yet is fine)."""
    _need(producer, "_message_accumulator.add_message", "AIOKafkaProducer")
    _need(producer, "_message_accumulator.fail_all", "AIOKafkaProducer")
    _need(producer, "_sender.sender_task", "AIOKafkaProducer")
    _need(producer, "client.cluster.add_listener", "AIOKafkaProducer")


def check_transactional(producer: Any) -> None:
    """The transaction manager internal the worker reads exists on a transactional producer."""
    _need(producer, "_txn_manager._transaction_waiter", "AIOKafkaProducer (transactional)")


def check_consumer(consumer: Any) -> None:
    """Every consumer internal cfn uses exists on `consumer` (after start: the coordinator)."""
    _need(consumer, "_client.fetch_all_metadata", "AIOKafkaConsumer")
    if getattr(consumer, "_group_id", None) is not None:
        _need(consumer, "_coordinator.request_rejoin", "AIOKafkaConsumer")
        _need(consumer, "_coordinator.fetch_committed_offsets", "AIOKafkaConsumer")


def check_protocol(protocol_class: type) -> None:
    """The uvicorn protocol ingest/protocol.py subclasses has every method it overrides or
    calls (checked on the uvicorn class itself, not on cfn's subclass)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if not issubclass(protocol_class, HttpToolsProtocol):
        raise InternalsError(f"{protocol_class.__name__} is not uvicorn's HttpToolsProtocol")
    for name in (
        "data_received",
        "connection_lost",
        "on_message_begin",
        "on_url",
        "on_header",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
    ):
        _need(HttpToolsProtocol, name, "uvicorn's HttpToolsProtocol")


# ---- producer ---------------------------------------------------------------------------------


def accumulator(producer: Any) -> Any:
    """The producer's record accumulator (`send()` ends in its `add_message`)."""
    return producer._message_accumulator


def sender_alive(producer: Any) -> bool:
    """False once the producer's background sender has stopped (it never restarts)."""
    task = getattr(producer._sender, "sender_task", None)
    return task is None or not task.done()


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
    (an idempotent producer otherwise retries them until the broker takes them)."""
    producer._message_accumulator.fail_all(exc)


# ---- consumer ---------------------------------------------------------------------------------


async def fetch_metadata(client_owner: Any) -> Any:
    """A fresh metadata round trip through a consumer's or admin client's own connections."""
    return await client_owner._client.fetch_all_metadata()


def request_rejoin(consumer: Any) -> None:
    """Ask the group for a rebalance (no public call exists)."""
    consumer._coordinator.request_rejoin()


async def fetch_committed(consumer: Any, partitions: list[Any]) -> dict[Any, Any]:
    """The group's committed offsets of `partitions`, in one request."""
    result: dict[Any, Any] = await consumer._coordinator.fetch_committed_offsets(partitions)
    return result
