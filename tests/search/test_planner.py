"""The greedy offline memory planner: hand-computed arenas and a property test over random buffer sets."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.errors import SearchError
from search.planner import Buffer, check_plan, naive_sum, peak_live_bytes, plan_greedy


def test_residual_pattern_by_hand() -> None:
    # x [0,4] is read again by the add at step 4 (a residual); a [0,1], b [1,3], c [3,4] run in between.
    x, a, b, c = Buffer(100, 0, 4, "x"), Buffer(60, 0, 1, "a"), Buffer(60, 1, 3, "b"), Buffer(60, 3, 4, "c")
    plan = plan_greedy([x, a, b, c], alignment=1)
    # largest first: x at 0; a and b overlap in time → a at 100, b at 160; c overlaps x and b only → 100.
    assert plan.offsets == (0, 100, 160, 100)
    assert plan.arena_bytes == 220 == peak_live_bytes([x, a, b, c])
    assert naive_sum([x, a, b, c], alignment=1) == 280
    assert plan.offset_of("c") == 100


def test_alignment_rounds_offsets_and_arena() -> None:
    plan = plan_greedy([Buffer(10, 0, 1), Buffer(10, 1, 2), Buffer(10, 2, 3)], alignment=16)
    assert plan.offsets == (0, 16, 0)
    assert plan.arena_bytes == 32
    assert naive_sum(plan.buffers, alignment=16) == 48


def test_disjoint_lifetimes_share_memory() -> None:
    plan = plan_greedy([Buffer(64, i, i) for i in range(5)], alignment=4)
    assert set(plan.offsets) == {0} and plan.arena_bytes == 64


def test_bad_input_is_one_line_error() -> None:
    with pytest.raises(SearchError, match="ends .* before it starts"):
        plan_greedy([Buffer(8, 3, 1, "t7")])
    with pytest.raises(SearchError, match="alignment"):
        plan_greedy([Buffer(8, 0, 1)], alignment=0)
    with pytest.raises(SearchError, match="negative size"):
        plan_greedy([Buffer(-1, 0, 1)])


buffers_st = st.lists(
    st.builds(lambda size, first, length: Buffer(size, first, first + length),
              st.integers(0, 2000), st.integers(0, 30), st.integers(0, 12)),
    min_size=0, max_size=40)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(buffers_st, st.sampled_from([1, 4, 16]))
def test_offsets_never_overlap_live_buffers(buffers: list[Buffer], alignment: int) -> None:
    plan = plan_greedy(buffers, alignment)
    for i, (a, oa) in enumerate(zip(buffers, plan.offsets)):
        assert oa % alignment == 0
        assert oa + a.size_bytes <= plan.arena_bytes
        for b, ob in zip(buffers[i + 1:], plan.offsets[i + 1:]):
            live_together = a.first_use <= b.last_use and b.first_use <= a.last_use
            if live_together and a.size_bytes and b.size_bytes:
                assert oa + a.size_bytes <= ob or ob + b.size_bytes <= oa
    assert peak_live_bytes(buffers) <= plan.arena_bytes <= naive_sum(buffers, alignment)
    check_plan(plan)


def test_check_plan_detects_overlap() -> None:
    plan = plan_greedy([Buffer(8, 0, 2, "p"), Buffer(8, 1, 3, "q")], alignment=1)
    broken = type(plan)(plan.buffers, (0, 4), plan.arena_bytes, 1)
    with pytest.raises(SearchError, match="overlap"):
        check_plan(broken)
