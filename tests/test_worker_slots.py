"""Which waiting mails a worker takes (gateway.service.takes): its own slot's; another
worker's only once they have waited HELP_AFTER seconds since it first saw them, or past
the batch their owner is on (a backlog, from its newest end), so that an idle worker does
not parse and check a mail its owner is taking (issue 20), while the mails of a worker
that is stuck or gone are still taken."""

from __future__ import annotations

from gateway.service import HELP_AFTER, takes


def test_own_mails_first_and_others_only_after_waiting():
    seen: dict[int, float] = {}
    # Worker 0 of 2: the even ids are its own.
    assert takes([1, 2, 3, 4], (0, 2), seen, now=100.0) == [2, 4]
    assert seen == {}  # nothing of another worker's noted while it has its own
    assert takes([1, 3], (0, 2), seen, now=100.0) == []  # worker 1's, just seen
    assert seen == {1: 100.0, 3: 100.0}
    assert takes([1, 3, 5], (0, 2), seen, now=100.0 + HELP_AFTER - 0.1) == []
    # Waited long enough: helped with (1 and 3), 5 not yet.
    assert takes([1, 3, 5], (0, 2), seen, now=100.0 + HELP_AFTER) == [1, 3]
    # Taken meanwhile by their owner: forgotten.
    assert takes([5], (0, 2), seen, now=100.0 + HELP_AFTER) == []
    assert seen == {5: 100.0 + HELP_AFTER - 0.1}


def test_a_single_worker_takes_everything_at_once():
    seen: dict[int, float] = {}
    assert takes([7, 8, 9], (0, 1), seen, now=0.0) == [7, 8, 9]
    assert seen == {}


def test_a_backlog_is_helped_with_from_its_end_at_once():
    """Another worker's mails past the batch it is on are taken at once, newest first:
    the two work towards each other, and the ones its owner is on are left to it."""
    seen: dict[int, float] = {}
    theirs = list(range(1, 80, 2))  # 40 mails of worker 1 of 2, none of worker 0's
    taken = takes(theirs, (0, 2), seen, now=5.0, batch=16)
    assert taken == sorted(theirs[16:], reverse=True)
    assert not set(taken) & set(theirs[:16])
    # Three workers: each other worker's batch is left to it.
    mails = list(range(30, 90))
    taken = takes([m for m in mails if m % 3], (0, 3), {}, now=5.0, batch=16)
    for owner in (1, 2):
        own = [m for m in mails if m % 3 == owner]
        assert not set(taken) & set(own[:16]) and set(own[16:]) <= set(taken)
