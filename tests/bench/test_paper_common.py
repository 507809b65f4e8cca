"""bench/paper/common.py: the aggregation helpers of the paper experiments."""
from bench.paper.common import mean_std, seed_agreement


def test_seed_agreement_counts_layers_over_every_pair() -> None:
    p0 = {"a": [4, 8], "b": [2, 4], "c": [8, 8]}
    p1 = {"a": [4, 8], "b": [2, 2], "c": [3, 8]}
    p2 = {"a": [4, 4], "b": [2, 4], "c": [8, 8]}
    s = seed_agreement([p0, p1, p2])
    assert s["pairs"] == 3
    # weights: a 3/3, b 3/3, c 1/3 -> 7/9; activations: a 1/3, b 1/3, c 3/3 -> 5/9
    assert abs(s["w"] - 7 / 9) < 1e-12 and abs(s["a"] - 5 / 9) < 1e-12
    # both: (p0,p1): a; (p0,p2): b, c; (p1,p2): none -> 3/9
    assert abs(s["both"] - 3 / 9) < 1e-12


def test_seed_agreement_needs_two_policies() -> None:
    assert seed_agreement([{"a": [4, 4]}])["both"] is None
    assert seed_agreement([])["pairs"] == 0


def test_mean_std_ignores_missing_values() -> None:
    s = mean_std([0.5, None, 0.7])
    assert s["n"] == 2 and abs(s["mean"] - 0.6) < 1e-12 and abs(s["std"] - 0.1414213562) < 1e-9


def test_seed_agreement_skips_fixed_layers() -> None:
    p0, p1 = {"first": [8, 8], "x": [2, 4]}, {"first": [8, 8], "x": [4, 4]}
    assert seed_agreement([p0, p1])["w"] == 0.5
    assert seed_agreement([p0, p1], skip=["first"])["w"] == 0.0
