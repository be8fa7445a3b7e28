from asgi_sidecar.memo import Memo, interned


def test_a_memo_answers_what_was_put_and_nothing_else():
    for front in (True, False):
        memo: Memo[int] = Memo(8, 16, front=front)
        assert memo.get(b"a") is None
        memo.put(b"a", 1)
        memo.put(b"b", 2)
        assert [memo.get(k) for k in (b"a", b"b", b"a", b"a", b"c")] == [1, 2, 1, 1, None]
        # A key equal to the last hit but another object answers the same.
        assert memo.get(bytes(bytearray(b"a"))) == 1


def test_the_front_never_answers_for_a_key_it_did_not_hold():
    memo: Memo[bool] = Memo(8, 16, front=True)
    memo.put(b"host", True)
    assert memo.get(b"host") is True  # now in front
    assert memo.get(b"hosT") is None
    assert memo.get(b"hos") is None
    assert memo.get(b"") is None
    memo.put(b"", False)  # an empty key is kept in the dict, and found there
    assert memo.get(b"") is False
    assert memo.get(b"") is False  # and then in front
    assert memo.get(b"host") is True


def test_a_memo_is_bounded_in_entries_and_in_key_length():
    memo: Memo[int] = Memo(4, 8, front=True)
    for i in range(100):
        memo.put(b"k%d" % i, i)
        assert len(memo) <= 4
    assert memo.get(b"k99") == 99  # the last one put survives the emptying
    memo.put(b"x" * 9, 1)
    assert memo.get(b"x" * 9) is None  # too long to keep
    memo.put(b"x" * 8, 2)
    assert memo.get(b"x" * 8) == 2


def test_the_front_outlives_an_emptied_dict_with_the_same_answer():
    memo: Memo[int] = Memo(2, 8, front=True)
    memo.put(b"same", 7)
    assert memo.get(b"same") == 7
    memo.put(b"x", 1)
    memo.put(b"y", 2)  # full: emptied, then y
    assert memo.get(b"same") == 7  # from the front; a memo of a pure function stays right


def test_interned_values_share_one_object_per_value():
    memo: Memo[bytes] = Memo(2, 16, front=True)
    first = interned(memo, b"10.0.0.1")
    again = interned(memo, bytes(bytearray(b"10.0.0.1")))  # equal, another object
    assert again is first
    assert interned(memo, b"10.0.0.2") == b"10.0.0.2"
    assert interned(memo, b"x" * 17) == b"x" * 17  # too long to keep: itself
