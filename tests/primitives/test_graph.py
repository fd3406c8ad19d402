import pytest

from securefed.primitives.graph import NeighbourGraph, resolve_degree


def test_complete_graph():
    g = NeighbourGraph(range(1, 6), 4, b"s" * 32)
    assert g.complete and all(g.neighbours(i) == set(range(1, 6)) - {i} for i in range(1, 6))
    assert g.holders(3) == frozenset(range(1, 6))


@pytest.mark.parametrize("n,d", [(10, 4), (31, 6), (100, 40)])
def test_circulant_graph_is_regular_symmetric_deterministic(n, d):
    g = NeighbourGraph(range(1, n + 1), d, b"s" * 32)
    assert all(len(g.neighbours(i)) == d and i not in g.neighbours(i) for i in g.cohort)
    assert all(i in g.neighbours(j) for i in g.cohort for j in g.neighbours(i))
    again, other = NeighbourGraph(range(1, n + 1), d, b"s" * 32), NeighbourGraph(range(1, n + 1), d, b"t" * 32)
    assert all(again.neighbours(i) == g.neighbours(i) for i in g.cohort)
    assert any(other.neighbours(i) != g.neighbours(i) for i in g.cohort)  # seed matters


def test_resolve_degree_rules():
    assert resolve_degree(None, 100) == 99
    assert resolve_degree(0, 64) == 63              # auto: complete up to 64
    assert resolve_degree(0, 100) == 40             # 2*ceil(3*log2 100) = 2*20
    assert resolve_degree(5, 100) == 6              # rounded up to even
    assert resolve_degree(50, 10) == 9              # capped at n-1
    with pytest.raises(ValueError):
        resolve_degree(1, 10)
    with pytest.raises(ValueError):
        NeighbourGraph(range(1, 10), 3, b"s" * 32)  # odd degree, not complete
    with pytest.raises(ValueError, match="cohort"):
        NeighbourGraph(range(1, 5), 2, b"s" * 32).neighbours(9)
