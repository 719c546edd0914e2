"""engine.probe: property tests against an independent float64 reference written from the formulas.

The reference below shares no code with engine/probe/: it loops over tokens in float64, the way the issue
states the math (softmax, H = -Σ p log p with 0·log 0 = 0, Phi = 1 - H/log V, multiscale coherence, cloud,
discontinuity, CARL = 0.5·coh + 0.3·cloud + 0.2·disc).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import engine.probe as probe
from engine.errors import ProbeNonFiniteError, ProbeShapeError
from engine.probe import (
    DEFECT_THRESHOLD,
    KAPPA,
    SIGMA,
    CoherenceProbe,
    PhiField,
    carl_components_torch,
    carl_reward,
    cloud,
    coherence,
    crystallizations,
    discontinuity,
    horizon,
    kuramoto_r,
    meltings,
    phi_from_entropy,
    phi_from_logits,
    token_stats,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------
# the independent reference (float64, plain loops)
# ----------------------------------------------------------------------------------------------------------

def ref_token(row, token=None):
    """(phi, entropy, selected_prob) of one logits row; -inf entries have probability 0."""
    row = [float(v) for v in row]
    V = len(row)
    m = max(row)
    ex = [math.exp(v - m) if v != -math.inf else 0.0 for v in row]
    total = sum(ex)
    p = [e / total for e in ex]
    H = 0.0
    for q in p:
        if q > 0:
            H -= q * math.log(q)
    if token is None:
        token = row.index(m)
    return 1.0 - H / math.log(V), H, p[int(token)]


def ref_coherence(phi):
    T = len(phi)
    if T == 0:
        return 0.5
    num = den = 0.0
    j = 0
    while 2 ** j <= T and j < 16:
        size = 2 ** j
        n = T // size
        stds = []
        for k in range(n):
            block = phi[k * size:(k + 1) * size]
            mu = sum(block) / size
            stds.append(math.sqrt(sum((b - mu) ** 2 for b in block) / size))
        c = 1.0 - sum(stds) / len(stds)
        c = min(1.0, max(0.0, c))
        w = 2 ** (j / 2)
        num += w * c
        den += w
        j += 1
    return num / den


def ref_cloud(phi, sel):
    return sum(p * s for p, s in zip(phi, sel)) / len(phi) if phi else 0.0


def ref_discontinuity(phi):
    scores = []
    for k in range(len(phi) - 1):
        d = phi[k + 1] - phi[k]
        if abs(d) > 0.03:
            if d > 0:
                scores.append(0.8 if phi[k] < 0.5 else 0.3)
            else:
                scores.append(0.2 if phi[k] > 0.7 else 0.5)
    return sum(scores) / len(scores) if scores else 0.5


def ref_rewards(phi, sel):
    coh, cl, disc = ref_coherence(phi), ref_cloud(phi, sel), ref_discontinuity(phi)
    return {"coherence": coh, "cloud": cl, "discontinuity": disc, "carl": 0.5 * coh + 0.3 * cl + 0.2 * disc}


def ref_sequence(logits2d, tokens=None):
    out = [ref_token(row, None if tokens is None else tokens[t]) for t, row in enumerate(logits2d)]
    phi = [o[0] for o in out]
    return phi, [o[1] for o in out], [o[2] for o in out]


# ----------------------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------------------

finite = st.floats(-30, 30, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def logits_2d(draw, max_t=10, max_v=40, dtype=np.float32):
    t = draw(st.integers(1, max_t))
    v = draw(st.integers(2, max_v))
    return draw(arrays(dtype, (t, v), elements=finite))


@st.composite
def logits_3d(draw, dtype=np.float32):
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 8))
    v = draw(st.integers(2, 30))
    return draw(arrays(dtype, (b, t, v), elements=finite))


phi_lists = st.lists(st.floats(0, 1, allow_nan=False), min_size=0, max_size=70)


# ----------------------------------------------------------------------------------------------------------
# Phi per token
# ----------------------------------------------------------------------------------------------------------

@SETTINGS
@given(logits_2d())
def test_phi_in_unit_interval_and_matches_reference(x):
    phi, ent, sel, ids = token_stats(x)
    assert phi.shape == ent.shape == sel.shape == ids.shape == x.shape[:1]
    assert np.all((phi >= 0) & (phi <= 1))
    rphi, rent, rsel = ref_sequence(x)
    np.testing.assert_allclose(phi, rphi, atol=1e-6)
    np.testing.assert_allclose(ent, rent, atol=1e-5)
    np.testing.assert_allclose(sel, rsel, atol=1e-6)
    assert list(ids) == [int(np.argmax(r)) for r in x]


@SETTINGS
@given(st.integers(2, 5000), st.floats(-50, 50, allow_nan=False), st.integers(1, 5))
def test_uniform_logits_give_phi_zero(v, c, t):
    phi, ent = phi_from_logits(np.full((t, v), c, dtype=np.float32))
    np.testing.assert_allclose(phi, 0.0, atol=1e-6)
    np.testing.assert_allclose(ent, math.log(v), rtol=1e-6)


@SETTINGS
@given(st.integers(2, 5000), st.data())
def test_one_hot_logits_give_phi_one(v, data):
    hot = data.draw(st.integers(0, v - 1))
    x = np.zeros((2, v), dtype=np.float32)
    x[:, hot] = 1e4
    phi, ent, sel, ids = token_stats(x)
    np.testing.assert_allclose(phi, 1.0, atol=1e-9)
    np.testing.assert_allclose(sel, 1.0)
    assert list(ids) == [hot, hot]


@SETTINGS
@given(logits_2d(dtype=np.float64), st.floats(-1000, 1000, allow_nan=False))
def test_adding_a_constant_changes_nothing(x, c):
    a = token_stats(x)
    b = token_stats(x + c)
    np.testing.assert_allclose(a[0], b[0], atol=1e-9)
    np.testing.assert_allclose(a[2], b[2], atol=1e-9)
    # float32: the shift itself rounds the logits (ulp of |x|+|c|), nothing more
    a32, b32 = token_stats(x.astype(np.float32)), token_stats((x + c).astype(np.float32))
    np.testing.assert_allclose(a32[0], b32[0], atol=2e-4)


@SETTINGS
@given(logits_2d())
def test_numpy_torch_and_entropy_paths_agree(x):
    phi, ent, sel, ids = token_stats(x)
    tphi, tent, tsel, tids = token_stats(torch.from_numpy(x))
    assert isinstance(tphi, torch.Tensor) and tphi.dtype == torch.float32
    np.testing.assert_allclose(tphi.numpy(), phi, atol=1e-6)
    np.testing.assert_allclose(tsel.numpy(), sel, atol=1e-6)
    assert tids.tolist() == ids.tolist()
    # numpy input through the torch CPU kernel
    nphi, _, nsel, _ = token_stats(x, backend="torch")
    np.testing.assert_allclose(nphi, phi, atol=1e-6)
    # the entropy path (no logits): entropies + selected log-probs reproduce the snapshot
    v = x.shape[1]
    snap = CoherenceProbe(v).measure(x)
    snap_e = CoherenceProbe(v).measure_entropy(ent, np.log(sel))
    np.testing.assert_allclose(phi_from_entropy(ent, v), phi, atol=1e-12)
    np.testing.assert_allclose(snap_e.phi, snap.phi, atol=1e-12)
    for k in ("coherence", "cloud", "discontinuity", "carl"):
        assert getattr(snap_e.rewards, k) == pytest.approx(getattr(snap.rewards, k), abs=1e-9)
    np.testing.assert_allclose(snap_e.field.surprisal, -np.log(sel)[None, :], atol=1e-9)


@SETTINGS
@given(logits_3d(), st.booleans())
def test_batch_is_the_concatenation_of_its_rows(x, with_tokens):
    b, t, v = x.shape
    tokens = (np.arange(b * t).reshape(b, t) * 7) % v if with_tokens else None
    snap = CoherenceProbe().measure(x, tokens)
    assert snap.field.phi.shape == (b, t) and snap.n_tokens == b * t and snap.batched
    for i in range(b):
        row = CoherenceProbe().measure(x[i], None if tokens is None else tokens[i])
        np.testing.assert_allclose(snap.field.phi[i], row.phi, atol=1e-12)
        np.testing.assert_allclose(snap.field.selected_prob[i], row.field.selected_prob[0], atol=1e-12)
        assert snap.per_sequence[i] == row.rewards
    for k in ("coherence", "cloud", "discontinuity", "carl"):
        assert getattr(snap.rewards, k) == pytest.approx(np.mean([getattr(r, k) for r in snap.per_sequence]))
    # a non-contiguous batch (sequences interleaved in memory) gives the same field
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    assert not xt.flags.c_contiguous or b == 1 or t == 1
    np.testing.assert_array_equal(token_stats(xt, tokens)[0], snap.field.phi)


@SETTINGS
@given(logits_2d(max_v=200))
def test_half_precision_inputs_match_float32_on_the_same_values(x):
    for half_np, half_torch in ((np.float16, torch.float16), (None, torch.bfloat16)):
        tx = torch.from_numpy(x).to(half_torch)
        exact = tx.float().numpy()  # the values the half tensor holds, exactly, as float32
        ref_phi = token_stats(exact)[0]
        np.testing.assert_allclose(token_stats(tx)[0].numpy(), ref_phi, atol=1e-6)
        if half_np is not None:
            np.testing.assert_allclose(token_stats(x.astype(half_np))[0], ref_phi, atol=1e-6)
        # and close to the unrounded float32 logits (the rounding of the logits is all that differs)
        np.testing.assert_allclose(ref_phi, token_stats(x)[0], atol=0.05)


def test_chunked_and_threaded_kernel_equals_single_pass(monkeypatch):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((37, 501)) * 4).astype(np.float32)
    tokens = rng.integers(0, 501, size=37)
    whole = token_stats(x, tokens)
    monkeypatch.setattr(probe.kernel, "_CHUNK_ELEMS_CPU", 1500)  # 2 rows per chunk
    monkeypatch.setattr(probe.kernel, "_THREAD_MIN_ELEMS", 1)  # force the thread pool
    monkeypatch.setattr(probe.kernel, "_cpu_threads", lambda: 3)
    chunked = token_stats(x, tokens)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    rphi, _, rsel = ref_sequence(x, tokens)
    np.testing.assert_allclose(chunked[0], rphi, atol=1e-6)
    np.testing.assert_allclose(chunked[2], rsel, atol=1e-6)
    # a NaN deep inside is still reported at its own position, whichever thread finds it
    x[29, 17] = np.nan
    with pytest.raises(ProbeNonFiniteError) as err:
        token_stats(x)
    assert err.value.context["position"] == [29]


# ----------------------------------------------------------------------------------------------------------
# the sequence metrics
# ----------------------------------------------------------------------------------------------------------

@SETTINGS
@given(phi_lists, st.data())
def test_metrics_match_reference(phi, data):
    sel = data.draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=len(phi), max_size=len(phi)))
    assert coherence(phi) == pytest.approx(ref_coherence(phi), abs=1e-12)
    assert cloud(phi, sel) == pytest.approx(ref_cloud(phi, sel), abs=1e-12)
    assert discontinuity(phi) == pytest.approx(ref_discontinuity(phi), abs=1e-12)
    r = carl_reward(phi, sel)
    ref = ref_rewards(phi, sel)
    for k in ref:
        assert r[k] == pytest.approx(ref[k], abs=1e-12)
    assert 0.0 <= r["coherence"] <= 1.0 and 0.0 <= r["discontinuity"] <= 1.0


def test_metric_edge_cases_and_constants():
    assert coherence([]) == 0.5 and discontinuity([]) == 0.5 and cloud([], []) == 0.0
    assert coherence([0.3]) == 1.0  # one token: only scale 2^0, blocks of one have no spread
    assert discontinuity([0.2, 0.2 + DEFECT_THRESHOLD]) == 0.5  # |Δ| must exceed the threshold
    assert discontinuity([0.2, 0.9]) == 0.8 and discontinuity([0.6, 0.9]) == 0.3
    assert discontinuity([0.9, 0.1]) == 0.2 and discontinuity([0.6, 0.1]) == 0.5
    assert KAPPA == pytest.approx(64 / 3) and SIGMA == 3 / 16 and DEFECT_THRESHOLD == 0.03
    assert horizon(768) == pytest.approx(64 / 3 * 768)
    w = {"coherence": 1.0, "cloud": 0.0, "discontinuity": 0.0}
    assert carl_reward([0.1, 0.9], [1, 1], w)["carl"] == pytest.approx(ref_coherence([0.1, 0.9]))


def test_crystallization_melting_surprisal_kuramoto():
    phi = [0.1, 0.5, 0.5, 0.2, 0.21, 0.9]
    assert crystallizations(phi).tolist() == [1, 5]
    assert meltings(phi).tolist() == [3]
    assert kuramoto_r([0.4] * 5) == pytest.approx(1.0)
    assert kuramoto_r([0.0, 1.0]) == pytest.approx(0.0, abs=1e-12)  # e^0 + e^{iπ} = 0
    ref = abs(sum(complex(math.cos(math.pi * p), math.sin(math.pi * p)) for p in phi) / len(phi))
    assert kuramoto_r(phi) == pytest.approx(ref)
    x = np.log(np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    snap = CoherenceProbe().measure(x, np.array([1, 1]))
    np.testing.assert_allclose(snap.field.surprisal[0], [-math.log(0.2), -math.log(0.5)])
    d = snap.to_dict()
    assert d["crystallizations"] + d["meltings"] == len(crystallizations(snap.phi)) + len(meltings(snap.phi))
    assert d["crystallized_fraction"] == pytest.approx(np.mean(snap.phi >= SIGMA))


# ----------------------------------------------------------------------------------------------------------
# the torch batched rewards
# ----------------------------------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(1, 5), st.integers(0, 40), st.data())
def test_torch_batched_rewards_equal_numpy_per_row(b, t, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    # piecewise-constant phi with jumps, so the discontinuity branches all occur
    phi = np.clip(np.cumsum(rng.choice([0, 0, 0.2, -0.2, 0.05], size=(b, t)), axis=1) + rng.uniform(0, 1, (b, 1)),
                  0, 1)
    sel = rng.uniform(0, 1, (b, t))
    lengths = [data.draw(st.integers(0, t)) for _ in range(b)]
    shuffle = data.draw(st.booleans())
    mask = np.zeros((b, t), dtype=bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
        if shuffle:
            rng.shuffle(mask[i])  # not right-padded: the unmasked tokens, in order, count
    out = carl_components_torch(torch.from_numpy(phi), torch.from_numpy(sel), torch.from_numpy(mask))
    for i in range(b):
        ref = ref_rewards(list(phi[i][mask[i]]), list(sel[i][mask[i]]))
        for k in ref:
            assert out[k][i].item() == pytest.approx(ref[k], abs=1e-9), (k, i)
    # float32 inputs (what a trainer holds) stay within float32 rounding
    out32 = carl_components_torch(torch.from_numpy(phi).float(), torch.from_numpy(sel).float())
    for i in range(b):
        ref = carl_reward(phi[i], sel[i])
        for k in ref:
            assert out32[k][i].item() == pytest.approx(ref[k], abs=1e-5)


# ----------------------------------------------------------------------------------------------------------
# masked mode, errors, devices, memory
# ----------------------------------------------------------------------------------------------------------

@SETTINGS
@given(logits_2d(), st.data())
def test_masked_mode_treats_minus_inf_as_probability_zero(x, data):
    t, v = x.shape
    masked = data.draw(arrays(bool, (t, v)))
    masked[np.arange(t), data.draw(arrays(np.int64, (t,), elements=st.integers(0, v - 1)))] = False
    xm = np.where(masked, -np.inf, x).astype(np.float32)
    if masked.any():
        with pytest.raises(ProbeNonFiniteError):
            token_stats(xm)
    phi, ent, sel, _ = token_stats(xm, allow_masked=True)
    rphi, rent, rsel = ref_sequence(xm)  # V stays the full last dimension
    np.testing.assert_allclose(phi, rphi, atol=1e-6)
    np.testing.assert_allclose(sel, rsel, atol=1e-6)
    tphi = token_stats(torch.from_numpy(xm), allow_masked=True)[0]
    np.testing.assert_allclose(tphi.numpy(), rphi, atol=1e-6)


@pytest.mark.parametrize("bad,what", [(np.nan, "nan"), (np.inf, "+inf"), (-np.inf, "-inf")])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nonfinite_logits_raise_with_position(bad, what, kind):
    x = np.zeros((2, 3, 5), dtype=np.float32)
    x[1, 2, 4] = bad
    arr = torch.from_numpy(x) if kind == "torch" else x
    with pytest.raises(ProbeNonFiniteError) as err:
        CoherenceProbe().measure(arr)
    assert err.value.code == "carl.probe.nonfinite" and err.value.exit_code == 2
    assert err.value.context == {"position": [1, 2], "value": what}
    if what != "-inf":  # NaN / +inf stay errors in masked mode
        with pytest.raises(ProbeNonFiniteError):
            CoherenceProbe(allow_masked=True).measure(arr)
    x[0, 0, :] = -np.inf  # a row with no finite logit is an error even in masked mode
    x[1, 2, 4] = 0
    with pytest.raises(ProbeNonFiniteError, match="all -inf"):
        CoherenceProbe().measure(x, allow_masked=True)


def test_shape_errors():
    for bad in (np.zeros(5), np.zeros((1, 2, 3, 4)), np.zeros((3, 1))):
        with pytest.raises(ProbeShapeError) as err:
            phi_from_logits(bad)
        assert err.value.code == "carl.probe.shape"
    with pytest.raises(ProbeShapeError, match="do not match"):
        token_stats(np.zeros((4, 6)), np.zeros(5, dtype=int))
    with pytest.raises(ProbeShapeError, match="out of range"):
        token_stats(np.zeros((4, 6)), np.array([0, 1, 2, 6]))
    with pytest.raises(ProbeShapeError, match="integers"):
        token_stats(np.zeros((2, 6)), np.array([0.0, 1.0]))
    with pytest.raises(ProbeShapeError, match="vocab_size"):
        CoherenceProbe(vocab_size=7).measure(np.zeros((2, 6)))
    with pytest.raises(ProbeShapeError):
        PhiField.from_entropy(np.zeros(3), np.zeros(4), 10)


def test_torch_input_stays_on_its_device_and_is_not_modified():
    x = torch.randn(3, 4, 50)
    before = x.clone()
    phi, ent, sel, ids = token_stats(x)
    assert phi.device == x.device and phi.shape == (3, 4) and ids.dtype == torch.int64
    assert torch.equal(x, before)
    xb = x.to(torch.bfloat16)
    token_stats(xb)
    assert torch.equal(xb, before.to(torch.bfloat16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_logits_stay_on_the_gpu():  # pragma: no cover - exercised on GPU machines
    x = torch.randn(2, 8, 1000, device="cuda", dtype=torch.bfloat16)
    phi, ent, sel, ids = token_stats(x)
    assert phi.is_cuda and ids.is_cuda
    np.testing.assert_allclose(phi.cpu().numpy(), token_stats(x.float().cpu())[0].numpy(), atol=1e-5)
    out = carl_components_torch(phi, sel)
    assert out["carl"].is_cuda and out["carl"].shape == (2,)


def test_memory_is_a_few_row_chunks_not_a_copy(tmp_path):
    import tracemalloc

    f = tmp_path / "big.npy"
    x = np.lib.format.open_memmap(f, mode="w+", dtype=np.float32, shape=(256, 32000))
    x[:] = np.random.default_rng(0).standard_normal((256, 32000), dtype=np.float32)
    x.flush()
    del x
    mm = np.load(f, mmap_mode="r")
    tracemalloc.start()
    snap = CoherenceProbe().measure(mm)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert snap.n_tokens == 256
    assert peak < mm.nbytes / 4, f"peak {peak / 2**20:.1f} MiB for a {mm.nbytes / 2**20:.0f} MiB input"
