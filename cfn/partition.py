"""Kafka's default partitioner for keyed records, computed a word at a time.

A keyed record goes to `toPositive(murmur2(key)) % partitions`, as the Java client and
aiokafka's DefaultPartitioner place it, so cfn's topics stay partitioned the way any other Kafka
client would expect. aiokafka computes murmur2 one byte at a time in Python, once per record;
this mixes all of a key's 32-bit words at once and remembers the hash of shared key prefixes
(see `murmur2`). Equality with aiokafka's and with the Java client's values is a test.
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C

# The running hash after a key's first 32 bytes, by (those bytes, key length): the length seeds
# the hash. cfn's keys start `tenant|account_id|`, so every key of one account shares them and
# the hash of a new incident's key starts 8 words in. Bounded: cleared when full.
_PREFIX_WORDS = 8
_PREFIX_BYTES = _PREFIX_WORDS * 4
_PREFIX_LIMIT = 16_384
_prefix_states: dict[tuple[bytes, int], int] = {}


# Words mixed at once: enough for an incident key after its remembered prefix, and it keeps the
# lane tables below to 16 (a key's length is the sender's to choose).
_CHUNK = 16


@functools.cache
def _lanes(
    words: int,
) -> tuple[int, Callable[..., bytes], Callable[[bytes], tuple[int, ...]], Callable[..., Any]]:
    """For `words` whole words: the lane mask, lane packer and reader, the word reader."""
    mask = int.from_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00" * words, "little")
    lanes = struct.Struct(f"<{words}Q")
    return mask, lanes.pack, lanes.unpack, struct.Struct(f"<{words}I").unpack_from


def _mix(h: int, data: bytes, first: int, words: int) -> int:
    """The hash after mixing `words` words of `data` from word `first` into `h`.

    Each word's own mixing (`k *= m; k ^= k >> 24; k *= m`) does not depend on the running
    hash, so it runs on up to _CHUNK words at once: word i sits in bits 64i..64i+31 of one
    Python int, a product of two 32-bit values fits its 64-bit lane, and masking keeps the
    lanes apart. Only the chain through `h` is a loop.
    """
    while words:
        count = min(words, _CHUNK)
        mask, pack, unpack, read = _lanes(count)
        k = (int.from_bytes(pack(*read(data, first << 2)), "little") * _M) & mask
        k = ((k ^ ((k >> 24) & mask)) * _M) & mask
        for mixed in unpack(k.to_bytes(count << 3, "little")):
            h = ((h * _M) & _MASK) ^ mixed
        first += count
        words -= count
    return h


def murmur2(data: bytes) -> int:
    """MurmurHash2 as org.apache.kafka.common.utils.Utils.murmur2, as an unsigned 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    words = length >> 2
    done = 0
    if words > _PREFIX_WORDS:
        prefix = (data[:_PREFIX_BYTES], length)
        state = _prefix_states.get(prefix)
        if state is None:
            if len(_prefix_states) >= _PREFIX_LIMIT:
                _prefix_states.clear()
            state = _prefix_states[prefix] = _mix(h, data, 0, _PREFIX_WORDS)
        h = state
        done = _PREFIX_WORDS
    if words > done:
        h = _mix(h, data, done, words - done)
    tail = length & 3
    if tail:
        base = words << 2
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a keyed record among `partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def default_partitioner(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """Drop-in for aiokafka's DefaultPartitioner (`AIOKafkaProducer(partitioner=...)`)."""
    if key is None:
        return random.choice(available or all_partitions)  # noqa: S311 (load spreading)
    return all_partitions[partition_for(key, len(all_partitions))]
