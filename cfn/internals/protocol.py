"""The Kafka requests aiokafka 0.14 lacks, in aiokafka's own protocol types: the two of KIP-447
and ListTransactions (KIP-664).

One transactional producer per worker (`CFN_TRANSACTIONS=worker`, see processors/transactions.py) is
only safe when a worker that lost its partitions can no longer commit for them. KIP-447 does
that with the consumer group's generation instead of a transactional id per partition:

* **TxnOffsetCommit v3** carries the committing member's generation and member id; the group
  coordinator refuses the offsets of a member from an older generation, so a zombie's
  transaction cannot commit. aiokafka only sends v0, which carries neither.
* **OffsetFetch v7** has `require_stable`: the coordinator answers UNSTABLE_OFFSET_COMMIT while a
  transaction holds pending offsets for a partition, so the partition's new owner starts from
  what the previous owner's last transaction decided, not from before it.

* **ListTransactions v0** asks one broker for the transactions its coordinator partitions hold
  in given states: whether any transaction of cfn's is still open (see
  `cfn.internals.fetch_committed`).

All three are "flexible" (compact strings and arrays, tagged fields); Kafka has accepted
them since 2.5 and 3.0 (this project runs 4.x). The wire schemas follow the Kafka protocol's
TxnOffsetCommit, OffsetFetch and ListTransactions JSON definitions.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

UNSTABLE_OFFSET_COMMIT = 88  # OffsetFetch: a transaction holds pending offsets; ask again
# TxnOffsetCommit: the member is not (or no longer) the group's, in this generation.
STALE_MEMBER = frozenset({22, 25, 82})  # ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID
NO_LEADER_EPOCH = -1


def _topics(*partition: tuple[str, Any]) -> tuple[str, Any]:
    """The `topics` field all three flexible schemas share: per topic its name and, per
    partition, the given fields, each level ending in its tagged fields."""
    return (
        "topics",
        CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(*partition, ("tags", TaggedFields))),
            ("tags", TaggedFields),
        ),
    )


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        _topics(
            ("partition_index", Int32),
            ("error_code", Int16),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        _topics(
            ("partition_index", Int32),
            ("committed_offset", Int64),
            ("committed_leader_epoch", Int32),
            ("committed_metadata", CompactString("utf-8")),
        ),
        ("tags", TaggedFields),
    )


# (topic, [(partition, offset, metadata)]), as aiokafka's own TxnOffsetCommitRequest takes them.
Offsets: TypeAlias = list[tuple[str, list[tuple[int, int, str]]]]


class TxnOffsetCommitV3(Request[TxnOffsetCommitRequest_v3]):  # type: ignore[misc]
    """TxnOffsetCommit with the group metadata; a broker without v3 is refused at negotiation."""

    API_KEY = 28

    def __init__(
        self,
        transactional_id: str,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        generation_id: int,
        member_id: str,
        topics: Offsets,
    ) -> None:
        self._fields: tuple[Any, ...] = (
            transactional_id,
            group_id,
            producer_id,
            producer_epoch,
            generation_id,
            member_id,
            None,  # group_instance_id: cfn's workers are dynamic members
            [
                (topic, [(p, offset, NO_LEADER_EPOCH, meta, {}) for p, offset, meta in parts], {})
                for topic, parts in topics
            ],
            {},
        )

    def build(
        self, request_struct_class: type[TxnOffsetCommitRequest_v3]
    ) -> TxnOffsetCommitRequest_v3:
        return request_struct_class(*self._fields)


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        _topics(
            ("partition_index", Int32),
            ("committed_offset", Int64),
            ("committed_leader_epoch", Int32),
            ("metadata", CompactString("utf-8")),
            ("error_code", Int16),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class OffsetFetchV7(Request[OffsetFetchRequest_v7]):  # type: ignore[misc]
    """OffsetFetch v7, which has require_stable."""

    API_KEY = 9

    def __init__(
        self, group_id: str, topics: list[tuple[str, list[int]]], require_stable: bool
    ) -> None:
        self._group_id = group_id
        self._topics = topics
        self._require_stable = require_stable

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (topic, partitions, {}) for topic, partitions in self._topics
        ]
        return request_struct_class(self._group_id, topics, self._require_stable, {})


# The transaction states in which a transaction may still hold pending offsets (Kafka's
# TransactionState names); Empty, CompleteCommit, CompleteAbort and Dead are ended.
OPEN_TRANSACTION_STATES = ("Ongoing", "PrepareCommit", "PrepareAbort", "PrepareEpochFence")


class ListTransactionsResponse_v0(Response):  # type: ignore[misc]
    API_KEY = 66
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("unknown_state_filters", CompactArray(CompactString("utf-8"))),
        (
            "transaction_states",
            CompactArray(
                ("transactional_id", CompactString("utf-8")),
                ("producer_id", Int64),
                ("transaction_state", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class ListTransactionsRequest_v0(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 66
    API_VERSION = 0
    RESPONSE_TYPE = ListTransactionsResponse_v0
    SCHEMA = Schema(
        ("states_filters", CompactArray(CompactString("utf-8"))),
        ("producer_id_filters", CompactArray(Int64)),
        ("tags", TaggedFields),
    )


class ListOpenTransactions(Request[ListTransactionsRequest_v0]):  # type: ignore[misc]
    """ListTransactions v0 for the states in OPEN_TRANSACTION_STATES. A broker lists only the
    transactional ids the principal may describe (WRITE implies DESCRIBE)."""

    API_KEY = 66

    def build(
        self, request_struct_class: type[ListTransactionsRequest_v0]
    ) -> ListTransactionsRequest_v0:
        return request_struct_class(list(OPEN_TRANSACTION_STATES), [], {})
