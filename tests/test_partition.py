"""cfn.partition: the same partitions as aiokafka's (and the Java client's) default."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from cfn import partition
from cfn.partition import default_partitioner, murmur2, partition_for
from cfn.schemas.keys import incident_key


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_murmur2_equals_aiokafkas_for_any_bytes(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([b"default|9a7806061c88ada191ed06f989cc3dac|", b"t|" * 20]), st.binary())
def test_murmur2_of_keys_sharing_a_prefix_equals_aiokafkas(prefix: bytes, rest: bytes) -> None:
    # Several keys per prefix and length: the remembered prefix hashes are used, not just made.
    for data in (prefix + rest, prefix + rest[::-1], prefix + rest):
        assert murmur2(data) == aiokafka_murmur2(data)


@pytest.mark.parametrize("length", range(0, 81))
def test_murmur2_at_every_length_around_the_remembered_prefix(length: int) -> None:
    # 0..80 bytes: no words, the prefix boundary (32..36), one and several chunks after it.
    for fill in (b"a", b"\xff"):
        data = (b"tenant|9a7806061c88ada191ed06f989cc3dac|" + fill * 80)[:length]
        assert murmur2(data) == aiokafka_murmur2(data)
        assert murmur2(data) == aiokafka_murmur2(data)  # the second time from the prefix


def test_murmur2_of_long_keys_mixes_in_chunks() -> None:
    for length in (100, 257, 4096):
        data = bytes(range(256)) * (length // 256) + bytes(length % 256)
        assert murmur2(data) == aiokafka_murmur2(data)
    assert partition._lanes.cache_info().currsize <= partition._CHUNK


def test_remembered_prefixes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partition, "_PREFIX_LIMIT", 8)
    monkeypatch.setattr(partition, "_prefix_states", {})
    keys = [b"tenant|account-%04d-of-many|incident-one" % i for i in range(50)]
    for _ in range(2):
        assert [murmur2(k) for k in keys] == [aiokafka_murmur2(k) for k in keys]
    assert 0 < len(partition._prefix_states) <= 8


def test_known_java_values() -> None:
    # From the Java client's UtilsTest.testMurmur2 (signed ints there, unsigned here).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


@given(st.text(max_size=40), st.text(max_size=40), st.integers(min_value=1, max_value=64))
def test_incident_keys_land_where_aiokafka_puts_them(
    account: str, correlation: str, partitions: int
) -> None:
    key = incident_key("tenant", {"account_id": account, "alert_correlation_id": correlation})
    everything = list(range(partitions))
    expected = DefaultPartitioner()(key, everything, everything)
    assert partition_for(key, partitions) == expected
    assert default_partitioner(key, everything, everything) == expected


def test_unkeyed_records_go_to_an_available_partition() -> None:
    assert default_partitioner(None, [0, 1, 2], [2]) == 2
    assert default_partitioner(None, [0, 1, 2], []) in (0, 1, 2)
