"""Credit flow control: the rules (the C core), a model of them, and freedom
from deadlock."""
import random
from collections import deque

import pytest
from hypothesis import given, settings, strategies as st

from rdmamsg.errors import ProtocolError
from rdmamsg.protocol.credits import CreditWindow



class Model:
    """credits.py's docstring, word for word in Python: the oracle."""

    def __init__(self, depth):
        self.credits, self.unreturned, self.threshold = depth, 0, max(2, depth // 2)

    def can_send(self, returning=True):
        return self.credits >= 2 or (self.credits == 1 and returning and self.unreturned > 0)

    def update_due(self):
        return self.unreturned >= self.threshold and self.credits >= 1

    def spend(self, returning=True):
        self.credits -= 1
        owed, self.unreturned = (self.unreturned, 0) if returning else (0, self.unreturned)
        return owed

    def returned(self, n):
        self.credits += n

    def reposted(self):
        self.unreturned += 1


def test_starts_with_the_peers_depth_and_spends():
    w = CreditWindow(4)
    assert w.credits == 4 and w.can_send()
    assert w.spend() == 0 and w.credits == 3


def test_last_credit_only_for_a_fragment_that_returns_credits():
    w = CreditWindow(3)
    w.spend()
    w.spend()
    assert w.credits == 1 and not w.can_send()
    w.reposted()
    assert w.can_send()
    assert w.spend() == 1 and w.unreturned == 0


def test_a_fragment_that_returns_nothing_needs_two_credits():
    w = CreditWindow(3)
    w.spend()
    w.reposted()
    assert w.can_send() and w.can_send(returning=False)
    w.spend(returning=False)
    assert w.credits == 1 and w.unreturned == 1
    assert w.can_send() and not w.can_send(returning=False)


def test_update_due_at_threshold():
    w = CreditWindow(8)
    assert w.threshold == 4
    w.reposted(3)
    assert not w.update_due()
    w.reposted()
    assert w.update_due()


def test_peer_cannot_return_more_than_it_owes():
    w = CreditWindow(4)
    w.spend()
    with pytest.raises(ProtocolError):
        w.returned(2)


@pytest.mark.parametrize("depth,threshold", [(1, None), (2, None), (4, 0), (4, 1), (4, 4)])
def test_bad_parameters(depth, threshold):
    with pytest.raises(ValueError):
        CreditWindow(depth, threshold)


@given(st.integers(3, 16), st.lists(st.sampled_from("sfRrU"), max_size=200), st.data())
def test_the_rules_match_their_model(depth, ops, data):
    py, c = Model(depth), CreditWindow(depth)
    outstanding = 0
    for op in ops:
        assert (py.credits, py.unreturned, py.can_send(), py.can_send(False), py.update_due()) == \
               (c.credits, c.unreturned, c.can_send(), c.can_send(False), c.update_due())
        if op in "sf" and py.credits:
            assert py.spend(op == "s") == c.spend(op == "s")
            outstanding += 1
        elif op == "R" and outstanding:
            n = data.draw(st.integers(1, outstanding))
            py.returned(n)
            c.returned(n)
            outstanding -= n
        elif op in "rU":
            py.reposted()
            c.reposted()


def simulate(depth, threshold, sends_a, sends_b, seed, eager=False):
    """Two sides that follow the rules, with messages in flight and receivers
    that consume at random: every message gets through, nothing deadlocks.
    ``eager``: a side sends a due CREDIT at once, before its sender gets a
    turn, as the engines do."""
    rng = random.Random(seed)
    win = [CreditWindow(depth, threshold), CreditWindow(depth, threshold)]
    todo = [sends_a, sends_b]
    wire = [deque(), deque()]      # wire[i]: in flight from i to 1-i
    inbox = [deque(), deque()]     # received, not yet consumed (holds a buffer)
    got = [0, 0]
    for _ in range(200_000):
        if not any(todo) and not any(wire) and not any(inbox):
            return got
        i = rng.randrange(2)
        w = win[i]
        action = rng.randrange(3)
        returning = rng.random() < 0.7      # some fragments (FIRST) return nothing
        if action == 0 and todo[i] and w.can_send(returning):
            wire[i].append(("data", w.spend(returning)))
            todo[i] -= 1
        elif action == 0 and w.update_due():
            wire[i].append(("credit", w.spend()))
        elif action == 1 and wire[1 - i]:
            kind, returned = wire[1 - i].popleft()
            w.returned(returned)
            if kind == "credit":
                w.reposted()          # control fragments are reposted at once
            else:
                inbox[i].append(kind)
            assert len(inbox[i]) <= depth
        elif action == 2 and inbox[i]:
            inbox[i].popleft()
            w.reposted()
            got[i] += 1
        if w.update_due() and (eager or rng.random() < 0.5):
            wire[i].append(("credit", w.spend()))
    raise AssertionError(f"stuck: todo={todo} wire={[len(q) for q in wire]} inbox={[len(q) for q in inbox]} "
                         f"credits={[w.credits for w in win]} owed={[w.unreturned for w in win]}")


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 12), st.data(), st.integers(0, 300), st.integers(0, 300), st.integers(),
       st.booleans())
def test_no_deadlock_and_nothing_lost(depth, data, a, b, seed, eager):
    threshold = data.draw(st.integers(2, depth - 1))
    assert simulate(depth, threshold, a, b, seed, eager) == [b, a]


@pytest.mark.parametrize("depth", [3, 4, 32, 1024])
def test_a_repost_for_one_credit_fragment_never_makes_an_update_due(depth):
    # Else two sides answer each other's CREDIT fragments for ever, each
    # taking the last credit that a waiting data fragment needed.
    w = CreditWindow(depth)
    w.reposted()
    assert not w.update_due()
