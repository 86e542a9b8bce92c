from __future__ import annotations

from gemma_operator.reconciler import is_subset, parse_progress


def test_subset_ignores_server_defaults_but_sees_changes() -> None:
    desired = {"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "args": ["x"]}]}}}
    actual = {"spec": {"replicas": 2, "progressDeadlineSeconds": 600,
                       "template": {"containers": [{"name": "a", "args": ["x"], "terminationMessagePath": "/t"}]}}}
    assert is_subset(desired, actual)
    assert not is_subset(desired, actual | {"spec": actual["spec"] | {"replicas": 3}})
    assert not is_subset({"a": ["x", "y"]}, {"a": ["x"]})


def test_progress_is_the_last_progress_line() -> None:
    tail = '{"event": "progress", "bytesDone": 10, "bytesTotal": 100, "percent": 10}\nnot json\n' \
           '{"event": "progress", "bytesDone": 40, "bytesTotal": 100, "percent": 40}\n'
    progress = parse_progress(tail)
    assert progress is not None and (progress.bytes_done, progress.bytes_total, progress.percent) == (40, 100, 40)
    assert parse_progress("starting\n") is None


def test_a_dropped_field_changes_the_spec_hash() -> None:
    from gemma_operator.reconciler import SPEC_HASH, with_spec_hash

    with_selector = {"kind": "Deployment", "metadata": {"name": "a"}, "spec": {"nodeSelector": {"x": "y"}}}
    without = {"kind": "Deployment", "metadata": {"name": "a"}, "spec": {}}
    applied = with_spec_hash(with_selector)
    assert is_subset(without, applied)  # why the subset check alone is not enough
    assert not is_subset(with_spec_hash(without), applied)
    assert applied["metadata"]["annotations"][SPEC_HASH] == with_spec_hash(with_selector)["metadata"]["annotations"][SPEC_HASH]
