import numpy as np
import pytest

from fedcls.data.partition import dirichlet, label_k, make_partition, quantity, shards
from fedcls.errors import ConfigError
from fedcls.schema import PartitionConfig

LABELS = np.repeat(np.arange(10), 400)  # 4000 samples, 400 per class (mnist5k's train pool)
SPEC = PartitionConfig()


def covers_disjointly(parts, n_total):
    joined = np.concatenate(parts)
    return len(joined) == len(np.unique(joined)) and set(joined) <= set(range(n_total))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_label_k_gives_exact_label_sets_split_equally(k):
    rng = np.random.default_rng(0)
    parts = label_k(LABELS, 10, rng, k)
    holders = {c: [i for i, p in enumerate(parts) if c in set(LABELS[p])] for c in range(10)}
    for i, part in enumerate(parts):
        held = set(LABELS[part].tolist())
        assert len(held) == k and i % 10 in held
    for c, owners in holders.items():
        sizes = [int((LABELS[parts[i]] == c).sum()) for i in owners]
        assert sum(sizes) == 400 and max(sizes) - min(sizes) <= 1
    assert covers_disjointly(parts, len(LABELS))


def test_label_1_gives_each_client_its_own_label():
    parts = label_k(LABELS, 20, np.random.default_rng(3), 1)
    assert [set(LABELS[p].tolist()) for p in parts] == [{i % 10} for i in range(20)]
    assert all(len(p) == 200 for p in parts)  # each label split between its two holders


def test_dirichlet_respects_min_size_and_covers_the_pool():
    parts = dirichlet(LABELS, 10, np.random.default_rng(1), alpha=0.1, min_size=10)
    assert min(len(p) for p in parts) >= 10
    assert covers_disjointly(parts, len(LABELS)) and sum(map(len, parts)) == len(LABELS)


def test_dirichlet_large_alpha_is_near_uniform_small_alpha_is_skewed():
    def max_share_gap(alpha):
        parts = dirichlet(LABELS, 10, np.random.default_rng(2), alpha=alpha, min_size=10)
        shares = np.stack([np.bincount(LABELS[p], minlength=10) / len(p) for p in parts])
        return np.abs(shares - 0.1).max()

    assert max_share_gap(1e4) < 0.03
    assert max_share_gap(0.1) > 0.3


def test_dirichlet_impossible_min_size_is_a_config_error():
    with pytest.raises(ConfigError, match="partition.min_size"):
        dirichlet(LABELS[:100], 10, np.random.default_rng(0), alpha=0.1, min_size=10)


def test_quantity_skews_sizes_not_labels():
    parts = quantity(LABELS, 10, np.random.default_rng(4), alpha=0.5, min_size=10)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 10 and sum(sizes) == len(LABELS) and max(sizes) > 2 * min(sizes)
    big = max(parts, key=len)
    assert np.abs(np.bincount(LABELS[big], minlength=10) / len(big) - 0.1).max() < 0.05


def test_shards_give_each_client_its_shards():
    parts = shards(LABELS, 10, np.random.default_rng(5), shards_per_client=2)
    assert all(len(p) == 400 for p in parts)  # 2 shards of 4000 / 20 = 200 samples
    assert all(len(set(LABELS[p].tolist())) <= 2 for p in parts)  # shards of label-sorted data
    assert covers_disjointly(parts, len(LABELS))


def test_noise_std_grows_linearly_with_client_index():
    part = make_partition(LABELS, 5, PartitionConfig(kind="noise", sigma=0.1), seed=0)
    assert part.noise_std == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert make_partition(LABELS, 5, SPEC, seed=0).noise_std == [0.0] * 5


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "label_k", "shards", "quantity", "noise"])
def test_partitions_are_determined_by_the_seed(kind):
    spec = PartitionConfig(kind=kind)
    a, b = make_partition(LABELS, 10, spec, 7), make_partition(LABELS, 10, spec, 7)
    c = make_partition(LABELS, 10, spec, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices))
    assert any(not np.array_equal(x, y) for x, y in zip(a.indices, c.indices))


def test_class_counts_matrix():
    part = make_partition(LABELS, 4, PartitionConfig(kind="label_k", k=1), 0)
    counts = part.class_counts(LABELS, 10)
    assert counts.shape == (4, 10) and counts.sum() == 1600
    assert counts[2].tolist() == [0, 0, 400, 0, 0, 0, 0, 0, 0, 0]
