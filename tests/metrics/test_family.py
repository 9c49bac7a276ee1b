from __future__ import annotations

from flask_signal_metrics.metrics.family import Group


def test_reading_a_groups_count_leaves_it_as_it_was() -> None:
    group = Group()
    assert group.active() == 0
    for _ in range(3):
        next(group.started)
    next(group.finished)
    assert [group.active() for _ in range(4)] == [2, 2, 2, 2]  # reads take themselves off
    next(group.finished)
    next(group.finished)
    assert group.active() == 0
