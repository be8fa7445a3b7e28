import pytest

from bench.report import in_turn, paired_ratios


def test_paired_ratios_divide_round_by_round():
    assert paired_ratios([10.0, 30.0, 8.0], [10.0, 20.0, 16.0]) == [1.0, 1.5, 0.5]


@pytest.mark.parametrize(("values", "bases"), [([1.0], [1.0, 2.0]), ([], [])])
def test_paired_ratios_need_as_many_rounds_of_each(values, bases):
    with pytest.raises(ValueError, match="as many rounds"):
        paired_ratios(values, bases)


def test_in_turn_flips_the_order_every_other_round():
    assert list(in_turn("abc", 3)) == list("abccbaabc")
    assert list(in_turn("ab", 0)) == []
