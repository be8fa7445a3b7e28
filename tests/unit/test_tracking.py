from asgi_sidecar.tracking import Deadlines


def test_pops_expired_oldest_first_and_stops_at_the_first_future_deadline():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.add("a", 1)
    deadlines.add("b", 2)
    deadlines.add("c", 3)
    assert deadlines.pop_expired(2.5) == ["a", "b"]
    assert len(deadlines) == 1


def test_re_adding_moves_to_the_end():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.add("a", 1)
    deadlines.add("b", 2)
    deadlines.add("a", 3)
    assert list(deadlines) == ["b", "a"]  # iterated oldest first
    assert len(deadlines) == 2
    assert deadlines.pop_expired(2.5) == ["b"]  # "a" has its new deadline
    deadlines.add("b", 2)
    assert deadlines.oldest() == "a"
    assert deadlines.pop_oldest() == "a"
    deadlines.add("a", 3)
    assert deadlines.oldest() == "b"
    assert deadlines.pop_oldest() == "b"
    assert deadlines.pop_oldest() == "a"
    assert deadlines.pop_oldest() is None


def test_lowered_timeout_scans_everything_until_old_entries_are_gone():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.add("old", 100)  # long timeout
    deadlines.add("new", 5)  # after the timeout was lowered
    assert deadlines.pop_expired(6) == []  # ordered scan stops at "old"
    deadlines.unordered(until=100)
    assert deadlines.pop_expired(6) == ["new"]
    assert "old" in deadlines


def test_take_removes_a_key_and_says_whether_it_was_there():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.add("a", 1)
    assert deadlines.take("a") is True
    assert deadlines.take("a") is False
    assert len(deadlines) == 0
