"""ppfr.templates (SlerpFace, its index and kernel) against its definition, with slow
references written here.

``reference_score`` follows the definition one group at a time in float64;
``direct_scores`` is the direct vectorised form (rotate the query with every key, mask,
renormalise, dot), the way SlerpFace scored before the streamed index, kept here as the
reference the index must equal to float32 rounding on many pairs.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppfr._jit import LazyKernel
from ppfr.errors import InputError
from ppfr.templates import (
    SlerpFace,
    SlerpFaceConfig,
    SlerpFaceIndex,
    group_weights_from_templates,
    slerp_weight_polynomials,
)

DIM = 128
#: both scoring kernels of SlerpFaceIndex; numba is a dependency, so "numba" must work here
KERNELS = ["numba", "torch"]


def clustered(persons=6, per=4, dim=DIM, spread=0.35, seed=0):
    """Unit templates of ``persons`` identities, ``per`` noisy samples around each centre."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(persons, dim, generator=g), dim=1)
    noise = torch.randn(persons, per, dim, generator=g) * spread / math.sqrt(dim)
    t = F.normalize((centres[:, None] + noise).reshape(-1, dim), dim=1)
    labels = torch.arange(persons).repeat_interleave(per)
    return t, labels


def reference_score(sf, q, p, k):
    """The paper's score (docs/templates.md), one group at a time, in float64 (slerp by its
    formula)."""
    s = sf.group_size
    total = 0.0
    for g in range(sf.num_groups):
        sl = slice(g * s, (g + 1) * s)
        qg = q[sl].double() / q[sl].double().norm()
        kg = k[sl].double() / k[sl].double().norm()
        theta = torch.arccos((qg @ kg).clamp(-1, 1))
        a = sf.config.alpha - float(sf.weights[g])
        rot = (torch.sin((1 - a) * theta) * qg + torch.sin(a * theta) * kg) / torch.sin(theta)
        # same dropped entries as the protected template: the drop_counts smallest |k|
        order = sorted(range(s), key=lambda i: (abs(float(k[sl][i])), i))
        keep = torch.ones(s, dtype=torch.bool)
        keep[order[: int(sf.drop_counts[g])]] = False
        rot = torch.where(keep, rot, torch.zeros_like(rot))
        rot = rot / rot.norm()
        total += float(rot @ p[sl].double())
    return total


def test_protect_shape_and_finite():
    sf = SlerpFace(DIM)
    t, _ = clustered()
    k = sf.draw_keys(len(t), generator=torch.Generator().manual_seed(1))
    p = sf.protect(t, k)
    assert p.shape == t.shape and p.dtype == torch.float32
    assert torch.isfinite(p).all()
    # the dropped entries are exactly zero, the rest keeps norm m_g per group
    groups = p.view(len(t), sf.num_groups, sf.group_size)
    zeros = (groups == 0).sum(-1)
    assert torch.equal(zeros, sf.drop_counts.expand_as(zeros))
    assert torch.allclose(groups.norm(dim=-1), sf.weights.expand(len(t), -1), atol=1e-6)
    # protection moves the template: p is not t in disguise
    assert (F.cosine_similarity(p, t) < 0.5).all()


def test_same_person_scores_higher():
    sf = SlerpFace(DIM)
    t, labels = clustered()
    k = sf.draw_keys(len(t), generator=torch.Generator().manual_seed(2))
    p = sf.protect(t, k)
    s = sf.scores(t, p, k)
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(t), dtype=torch.bool)
    genuine, impostor = s[same & off], s[~same]
    assert genuine.min() > impostor.max()
    assert genuine.mean() - impostor.mean() > 3 * impostor.std()


def test_renewability_new_key_does_not_match():
    sf = SlerpFace(DIM)
    t, labels = clustered()
    gen = torch.Generator().manual_seed(3)
    k1, k2 = sf.draw_keys(len(t), generator=gen), sf.draw_keys(len(t), generator=gen)
    p1, p2 = sf.protect(t, k1), sf.protect(t, k2)
    # the stolen p1 compared as if it were enrolled under the new key k2 ...
    cross = sf.scores(p1 / p1.norm(dim=1, keepdim=True), p2, k2).diag()
    # ... falls below a threshold that accepts every other sample of the same person
    fresh = sf.scores(t, p2, k2)
    same = labels[:, None] == labels[None, :]
    genuine = fresh[same & ~torch.eye(len(t), dtype=torch.bool)]
    impostor = fresh[~same]
    threshold = (genuine.min() + impostor.max()) / 2
    assert genuine.min() > impostor.max()
    assert cross.max() < threshold
    # the two protected records of one template look unrelated
    assert F.cosine_similarity(p1, p2).abs().max() < 0.5


def test_scores_match_reference_loop():
    torch.manual_seed(0)
    weights = torch.rand(DIM // 16) + 0.2
    sf = SlerpFace(DIM, SlerpFaceConfig(drop=0.4), weights=weights)
    t, _ = clustered(persons=3, per=2)
    q, _ = clustered(persons=2, per=2, seed=5)
    k = sf.draw_keys(len(t), generator=torch.Generator().manual_seed(4))
    p = sf.protect(t, k)
    fast = sf.scores(q, p, k)
    slow = torch.tensor(
        [[reference_score(sf, qi, pj, kj) for pj, kj in zip(p, k, strict=True)] for qi in q],
        dtype=torch.float64,
    )
    assert torch.allclose(fast.double(), slow, atol=1e-5)
    # the query equal to the enrolled template scores exactly 1 (weights sum to 1)
    assert torch.allclose(sf.scores(t, p, k).diag(), torch.ones(len(t)), atol=1e-5)


def direct_scores(sf, q, p, k):
    """(m, n) scores by the direct form, float32, vectorised over every (query, key) pair."""
    n, g, s = p.shape[0], sf.num_groups, sf.group_size
    q_hat = sf._unit(q.reshape(-1, 1, g, s))  # (m, 1, G, s)
    k_hat = sf._unit(k.reshape(1, n, g, s))  # (1, n, G, s)
    rotated = sf._slerp(q_hat, k_hat)  # (m, n, G, s), the linear limit where sin ~ 0
    masked = sf._unit(rotated * sf._keep_mask(k).unsqueeze(0))
    return (masked * p.reshape(1, n, g, s)).sum(dim=(-1, -2))


def _random_setup(n=300, m=5, dim=DIM, seed=0, config=None):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(dim // 16, generator=g) + 0.2  # non-uniform: alpha_g, drop_g vary
    sf = SlerpFace(dim, config or SlerpFaceConfig(drop=0.4), weights=weights)
    t = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    k = sf.draw_keys(n, generator=g)
    q = F.normalize(torch.randn(m, dim, generator=g), dim=1)
    return sf, sf.protect(t, k), k, q, t


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("block", [16, 128, 2048])
def test_index_equals_direct_form(block, kernel):
    sf, p, k, q, t = _random_setup()
    idx = SlerpFaceIndex(sf, p, k, block=block, kernel=kernel)
    assert idx.kernel == kernel
    want = direct_scores(sf, torch.cat([q, t[:3]]), p, k)
    torch.testing.assert_close(idx.scores(torch.cat([q, t[:3]])), want, atol=1e-5, rtol=0)
    # one query at a time (the serving case) gives the same numbers
    torch.testing.assert_close(idx.scores(q[:1]), want[:1], atol=1e-5, rtol=0)
    # and SlerpFace.scores is the index under the hood
    torch.testing.assert_close(sf.scores(q, p, k), want[: len(q)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_index_fast_path_for_ordinary_queries(monkeypatch, kernel):
    """The exact fallback runs only for degenerate groups, never for padding or data."""
    sf, p, k, q, _ = _random_setup(n=300)
    idx = SlerpFaceIndex(sf, p, k, block=128, kernel=kernel)  # last block: 44 rows + padding
    calls = []
    original = SlerpFaceIndex._direct_form
    monkeypatch.setattr(
        SlerpFaceIndex,
        "_direct_form",
        lambda self, *a: calls.append(a[1].shape[0]) or original(self, *a),
    )
    idx.scores(q)
    idx.scores(q, slice(250, 300))
    assert calls == []
    idx.scores(k[:1])  # aligned with key 0: its columns go the exact way
    assert len(calls) == 1
    if kernel == "numba":
        assert calls == [1]  # the fused kernel redoes that one column, not its neighbours


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_index_append_equals_one_build(kernel, dtype):
    """Rows appended in pieces (into the last block's padding, then grown blocks) score as
    one index built from all of them, and earlier rows' scores never change."""
    sf, p, k, q, _ = _random_setup(n=700)
    whole = SlerpFaceIndex(sf, p, k, block=64, dtype=dtype, kernel=kernel)
    grown = SlerpFaceIndex(sf, p[:10], k[:10], block=64, dtype=dtype, kernel=kernel)
    before = grown.scores(q)
    for lo, hi in ((10, 11), (11, 64), (64, 65), (65, 400), (400, 700)):
        grown.append(p[lo:hi], k[lo:hi])
        assert len(grown) == hi and grown.capacity >= hi
    assert torch.equal(grown.scores(q), whole.scores(q))
    assert torch.equal(grown.scores(q, slice(0, 10)), before)
    with pytest.raises(InputError, match="one key per protected template"):
        grown.append(p[:2], k[:3])


@pytest.mark.parametrize("kernel", KERNELS)
def test_index_rows_match_full_scores(kernel):
    sf, p, k, q, _ = _random_setup(n=500)
    idx = SlerpFaceIndex(sf, p, k, kernel=kernel)
    idx_small = SlerpFaceIndex(sf, p, k, block=64, kernel=kernel)
    full = idx.scores(q)
    for rows in (slice(0, 500), slice(3, 7), slice(60, 70), slice(100, 400), slice(499, 500)):
        torch.testing.assert_close(idx.scores(q, rows), full[:, rows], atol=1e-6, rtol=0)
        torch.testing.assert_close(idx_small.scores(q, rows), full[:, rows], atol=1e-5, rtol=0)
    assert idx.scores(q, slice(5, 5)).shape == (len(q), 0)
    with pytest.raises(InputError, match="contiguous slice"):
        idx.scores(q, [1, 2])


@pytest.mark.parametrize("kernel", KERNELS)
def test_index_on_real_faces(orl4, kernel):
    """Templates from real ORL faces (a fixed random projection of the pixels)."""
    x = orl4.faces.mean(1).flatten(1)  # (40, 112*112) grey
    x = x - x.mean(0)
    proj = torch.randn(x.shape[1], DIM, generator=torch.Generator().manual_seed(0))
    t = F.normalize(x @ proj, dim=1)
    sf = SlerpFace(DIM)
    k = sf.draw_keys(len(t), generator=torch.Generator().manual_seed(1))
    p = sf.protect(t, k)
    idx = SlerpFaceIndex(sf, p, k, block=16, kernel=kernel)
    got = idx.scores(t)
    torch.testing.assert_close(got, direct_scores(sf, t, p, k), atol=1e-5, rtol=0)
    # a few pairs against the float64 definition, and a template matches itself exactly
    for i, j in ((0, 0), (3, 17), (39, 5)):
        assert abs(float(got[i, j]) - reference_score(sf, t[i], p[j], k[j])) < 1e-5
    torch.testing.assert_close(got.diag(), torch.ones(len(t)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_index_edge_cases_match_direct_form(kernel):
    sf, p, k, q, _ = _random_setup(n=8)
    kg = k.view(8, sf.num_groups, sf.group_size)
    edge = torch.stack(
        [
            k[0],  # every group aligned with key 0: theta = 0 against it
            -k[1],  # every group antipodal to key 1: the linear fallback
            torch.zeros(DIM),  # zero query: every group normalises to 0
            torch.cat([kg[2, 0], -kg[3, 1], q[0, 32:]]),  # mixed groups
            k[4] * 1e-20,  # tiny but non-zero
        ]
    )
    idx = SlerpFaceIndex(sf, p, k, block=4, kernel=kernel)
    got = idx.scores(edge)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, direct_scores(sf, edge, p, k), atol=1e-5, rtol=0)
    # theta = 0: the slerp of k with itself is k, so the score is p . unit(M k) per group
    kk = F.normalize(kg[0].double(), dim=-1)
    keep = sf._keep_mask(k[:1])[0]
    limit = (F.normalize(kk * keep, dim=-1) * p[0].view_as(kk).double()).sum()
    assert abs(float(got[0, 0]) - float(limit)) < 1e-5


@pytest.mark.parametrize("kernel", KERNELS)
def test_index_float16_close_and_small(kernel):
    sf, p, k, q, t = _random_setup(n=400)
    full = SlerpFaceIndex(sf, p, k, block=128, kernel=kernel)
    half = SlerpFaceIndex(sf, p, k, dtype=torch.float16, block=128, kernel=kernel)
    assert half.blocks.dtype == torch.float16
    assert half.nbytes < 0.6 * full.nbytes
    a, b = full.scores(torch.cat([q, t[:4]])), half.scores(torch.cat([q, t[:4]]))
    # half storage rounds each stored value to ~3 significant digits; scores move ~1e-3
    assert float((a - b).abs().max()) < 5e-3
    # the ordering of templates for a query barely changes
    top_full = a.topk(10, dim=1).indices
    top_half = b.topk(10, dim=1).indices
    assert (top_full[:, 0] == top_half[:, 0]).float().mean() >= 0.8
    # degenerate queries (aligned with / opposite to a key, zero) stay finite
    edge = torch.stack([k[0], -k[1], torch.zeros(DIM)])
    assert torch.isfinite(half.scores(edge)).all()
    with pytest.raises(InputError, match="dtype"):
        SlerpFaceIndex(sf, p, k, dtype=torch.float64)
    with pytest.raises(InputError, match="block"):
        SlerpFaceIndex(sf, p, k, block=0)
    with pytest.raises(InputError, match="one key per protected"):
        SlerpFaceIndex(sf, p, k[:3])


def test_fused_float16_equals_torch_float16():
    """Widening inside the kernel reads the same numbers as the eager path's widen copy."""
    sf, p, k, q, t = _random_setup(n=700, m=6)
    fused = SlerpFaceIndex(sf, p, k, dtype=torch.float16, block=256, kernel="numba")
    eager = SlerpFaceIndex(sf, p, k, dtype=torch.float16, block=256, kernel="torch")
    assert torch.equal(fused.blocks, eager.blocks)
    x = torch.cat([q, t[:3]])
    torch.testing.assert_close(fused.scores(x), eager.scores(x), atol=2e-6, rtol=0)
    torch.testing.assert_close(
        fused.scores(x, slice(100, 130)), eager.scores(x, slice(100, 130)), atol=2e-6, rtol=0
    )


@pytest.mark.parametrize("group_size", [4, 12, 16, 24])
def test_fused_kernel_any_group_size(group_size):
    """Eight rows per pass plus single rows: group sizes below, between and above 8."""
    dim = 4 * 24
    g = torch.Generator().manual_seed(group_size)
    weights = torch.rand(dim // group_size, generator=g) + 0.2
    sf = SlerpFace(dim, SlerpFaceConfig(group_size=group_size, drop=0.3), weights=weights)
    t = F.normalize(torch.randn(90, dim, generator=g), dim=1)
    k = sf.draw_keys(90, generator=g)
    p = sf.protect(t, k)
    q = F.normalize(torch.randn(3, dim, generator=g), dim=1)
    idx = SlerpFaceIndex(sf, p, k, block=32, kernel="numba")
    x = torch.cat([q, t[:2], k[5:6]])  # the last one is aligned with key 5
    torch.testing.assert_close(idx.scores(x), direct_scores(sf, x, p, k), atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 0.05, 0.3, 0.5, 0.775, 0.9, 0.999, 1.0])
def test_slerp_weight_polynomials_error_bound(alpha):
    """The interpolants match the slerp weights to 1e-8 in float64; as the kernel evaluates
    them (t from the float32 cosine, Horner in float32) to 1e-6 absolute (U, V <= 2) and 2e-6
    relative to |(U, V)| where that is above 0.1 (everywhere unless alpha_g is within ~0.03 of
    0 or 1 and c near -1, where both weights vanish)."""
    coef, err = slerp_weight_polynomials(torch.tensor([alpha]))
    assert coef.shape == (1, 2, 11) and coef.dtype == np.float32
    assert err < 1e-8
    cos = torch.linspace(-1, 1, 20001)[1:]  # c = -1 is the degenerate point, never scored
    t = (0.5 * cos + 0.5).sqrt()
    z = t + t - 1
    u, v = torch.full_like(z, float(coef[0, 0, -1])), torch.full_like(z, float(coef[0, 1, -1]))
    for i in range(9, -1, -1):
        u, v = u * z + float(coef[0, 0, i]), v * z + float(coef[0, 1, i])
    theta = torch.arccos(cos.double())
    scale = 2 * torch.cos(theta / 2)  # U, V are the slerp weights times sin(theta)/sin(theta/2)
    sin = torch.sin(theta)
    live = sin > 1e-9
    wt = torch.where(live, torch.sin((1 - alpha) * theta) / sin, torch.tensor(1 - alpha).double())
    wk = torch.where(live, torch.sin(alpha * theta) / sin, torch.tensor(alpha).double())
    want_u, want_v = wt * scale, wk * scale
    gap = torch.hypot(u.double() - want_u, v.double() - want_v)
    norm = torch.hypot(want_u, want_v)
    assert float(gap.max()) < 1e-6
    assert float((gap / norm)[norm > 0.1].max()) < 2e-6


def test_kernel_choice_and_torch_fallback(monkeypatch):
    import ppfr.templates.kernel as mod

    sf, p, k, q, _ = _random_setup(n=50)
    assert SlerpFaceIndex(sf, p, k).kernel == "numba"  # numba is a dependency
    assert SlerpFaceIndex(sf, p, k).fit_error < 1e-8
    with pytest.raises(InputError, match="kernel"):
        SlerpFaceIndex(sf, p, k, kernel="cuda")
    # where numba is missing or does not compile, the index scores with torch
    monkeypatch.setattr(mod, "FUSED", LazyKernel.unavailable("no numba"))
    idx = SlerpFaceIndex(sf, p, k)
    assert idx.kernel == "torch"
    torch.testing.assert_close(idx.scores(q), direct_scores(sf, q, p, k), atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="no numba"):
        SlerpFaceIndex(sf, p, k, kernel="numba")


def test_index_query_slices_and_small_gallery_block(monkeypatch):
    import ppfr.templates.index as mod

    sf, p, k, q, _ = _random_setup(n=300, m=9)
    idx = SlerpFaceIndex(sf, p, k, kernel="torch")  # the fused kernel takes any m at once
    assert idx.block == 300  # a gallery smaller than one block is not padded
    whole = idx.scores(q)
    monkeypatch.setattr(mod, "_WORK_BYTES", 1)  # one query per slice
    torch.testing.assert_close(idx.scores(q), whole, atol=1e-6, rtol=0)


def test_index_empty_and_deterministic():
    sf, p, k, q, _ = _random_setup(n=10)
    empty = SlerpFaceIndex(sf, p[:0], k[:0])
    assert len(empty) == 0 and empty.scores(q).shape == (len(q), 0)
    idx = SlerpFaceIndex(sf, p, k)
    assert idx.scores(q[:0]).shape == (0, 10)
    assert torch.equal(idx.scores(q), SlerpFaceIndex(sf, p, k).scores(q))


def test_uniform_weights_by_default_and_drop_schedule():
    sf = SlerpFace(DIM)
    assert torch.allclose(sf.weights, torch.full((8,), 1 / 8))
    assert torch.allclose(sf.alphas, torch.full((8,), 0.9 - 1 / 8))
    assert (sf.drop_counts == 8).all()  # drop 0.5 of 16 everywhere
    # non-uniform: low-attention groups drop more, and weights are normalised
    w = torch.tensor([4.0, 1, 1, 1, 1, 1, 1, 0.0])
    sw = SlerpFace(DIM, weights=w)
    assert math.isclose(float(sw.weights.sum()), 1.0, rel_tol=1e-6)
    assert sw.drop_counts[0] < sw.drop_counts[1] < sw.drop_counts[7]
    assert sw.drop_counts.max() <= 15  # every group keeps an entry

    class Rated:
        def template_group_weights(self):
            return w

    assert torch.allclose(SlerpFace.from_model(Rated(), DIM).weights, sw.weights)
    assert torch.allclose(SlerpFace.from_model(object(), DIM).weights, sf.weights)


def test_group_weights_from_templates_prefer_informative_groups():
    t, labels = clustered(persons=8, per=3, dim=32, spread=0.2)
    # destroy identity in the second group: replace it by noise
    t = t.clone()
    t[:, 16:] = torch.randn(len(t), 16, generator=torch.Generator().manual_seed(0))
    w = group_weights_from_templates(t, labels, group_size=16)
    assert w.shape == (2,) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    assert w[0] > w[1]


def test_bad_input_raises_input_error():
    sf = SlerpFace(DIM)
    t, _ = clustered()
    k = sf.draw_keys(len(t))
    with pytest.raises(InputError, match="multiple of group_size"):
        SlerpFace(100)
    with pytest.raises(InputError, match="weights must have"):
        SlerpFace(DIM, weights=torch.ones(3))
    with pytest.raises(InputError, match="non-negative"):
        SlerpFace(DIM, weights=-torch.ones(8))
    with pytest.raises(InputError, match="alpha"):
        SlerpFaceConfig(alpha=1.5)
    with pytest.raises(InputError, match="drop"):
        SlerpFaceConfig(drop=1.0)
    with pytest.raises(InputError, match=r"shape \(n, 128\)"):
        sf.protect(t[:, :64], k)
    with pytest.raises(InputError, match="one key per template"):
        sf.protect(t, k[:3])
    with pytest.raises(InputError, match="one key per protected"):
        sf.scores(t, sf.protect(t, k), k[:2])
    with pytest.raises(InputError, match="NaN"):
        sf.protect(torch.full_like(t, float("nan")), k)
    with pytest.raises(InputError, match="torch.Tensor or numpy"):
        sf.scores(t.tolist(), t, k)
    # numpy matrices (what a gallery store returns) are accepted as they are
    p = sf.protect(t, k)
    assert torch.equal(sf.scores(t.numpy(), p.numpy(), k.numpy()), sf.scores(t, p, k))
    with pytest.raises(InputError, match="non-negative integer"):
        sf.draw_keys(-1)


def test_degenerate_geometry_stays_finite():
    sf = SlerpFace(DIM)
    k = sf.draw_keys(3, generator=torch.Generator().manual_seed(7))
    t = torch.stack([k[0], -k[1], torch.zeros(DIM)])  # theta = 0, theta = pi, zero template
    p = sf.protect(t, k)
    assert torch.isfinite(p).all()
    assert torch.isfinite(sf.scores(t, p, k)).all()


def test_deterministic_with_seeded_generator():
    sf = SlerpFace(DIM)
    t, _ = clustered()
    k1 = sf.draw_keys(len(t), generator=torch.Generator().manual_seed(9))
    k2 = sf.draw_keys(len(t), generator=torch.Generator().manual_seed(9))
    assert torch.equal(k1, k2)
    assert torch.equal(sf.protect(t, k1), sf.protect(t, k2))
    assert torch.equal(sf.scores(t, sf.protect(t, k1), k1), sf.scores(t, sf.protect(t, k2), k2))
    k3 = sf.draw_keys(len(t), generator=torch.Generator().manual_seed(10))
    assert not torch.equal(sf.protect(t, k1), sf.protect(t, k3))
