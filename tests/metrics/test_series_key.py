"""Series identity: what makes two samples belong to the same series."""

from __future__ import annotations

from unity.metrics.store import SeriesKey


def test_labels_are_canonical_and_unit_is_not_identity() -> None:
    a = SeriesKey.of("disk", source_kind="instance", source_id="x", labels={"b": "2", "a": "1"})
    b = SeriesKey.of(
        "disk", source_kind="instance", source_id="x", labels={"a": "1", "b": "2"}, unit="B"
    )
    assert a.labels == (("a", "1"), ("b", "2"))
    assert a == b
    assert hash(a) == hash(b)
    assert a.hash == b.hash
    assert len({a, b}) == 1
    assert a.labels_dict == {"a": "1", "b": "2"}


def test_every_identity_field_makes_a_different_series() -> None:
    base = SeriesKey.of(
        "m", source_kind="instance", source_id="x", plugin_id="p", labels={"k": "v"}
    )
    variants = [
        SeriesKey.of("n", source_kind="instance", source_id="x", plugin_id="p", labels={"k": "v"}),
        SeriesKey.of("m", source_kind="run", source_id="x", plugin_id="p", labels={"k": "v"}),
        SeriesKey.of("m", source_kind="instance", source_id="y", plugin_id="p", labels={"k": "v"}),
        SeriesKey.of("m", source_kind="instance", source_id="x", plugin_id=None, labels={"k": "v"}),
        SeriesKey.of("m", source_kind="instance", source_id="x", plugin_id="p", labels={"k": "w"}),
        SeriesKey.of("m", source_kind="instance", source_id="x", plugin_id="p"),
    ]
    assert len({base.hash, *(v.hash for v in variants)}) == 7
    assert all(v != base for v in variants)


def test_hash_is_a_stable_sha256() -> None:
    key = SeriesKey.of("cpu", source_kind="instance", source_id="x")
    assert len(key.hash) == 64
    assert key.hash == SeriesKey("cpu", "instance", "x").hash
    assert key != ("cpu", "instance", "x", None, ())
