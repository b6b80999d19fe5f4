import numpy as np
import pytest
from keras import ops

from keras_tipsv2.training import losses
from keras_tipsv2.training.schedules import cosine_increase, linear_warmup


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_clip(x, y, t):
    logits = np_normalize(x) @ np_normalize(y).T / t
    idx = np.arange(len(x))
    i2t = -np_log_softmax(logits, 1)[idx, idx].mean()
    t2i = -np_log_softmax(logits, 0)[idx, idx].mean()
    return 0.5 * (i2t + t2i)


def np_ce(t, s, tau_s):
    return -(t * np_log_softmax(s / tau_s)).sum(-1)


def test_clip_loss_matches_numpy(rng):
    x, y = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    got = ops.convert_to_numpy(losses.clip_contrastive_loss(x, y, 0.05))
    np.testing.assert_allclose(got, np_clip(x, y, 0.05), rtol=1e-5)


def test_clip_loss_is_log_batch_for_uninformative_embeddings():
    x = np.ones((6, 4))
    got = ops.convert_to_numpy(losses.clip_contrastive_loss(x, x, 0.1))
    np.testing.assert_allclose(got, np.log(6), rtol=1e-6)


def test_dual_contrastive_pairs_cls1_with_alt_text_and_cls2_with_caption(rng):
    cls = rng.normal(size=(4, 2, 8))
    alt, cap = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    got = ops.convert_to_numpy(losses.dual_contrastive_loss(cls, alt, cap, 0.07))
    want = 0.5 * (np_clip(cls[:, 0], alt, 0.07) + np_clip(cls[:, 1], cap, 0.07))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_dual_contrastive_rejects_single_cls_token(rng):
    with pytest.raises(ValueError, match="batch, 2, dim"):
        losses.dual_contrastive_loss(rng.normal(size=(4, 1, 8)), rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), 0.1)


def test_centered_teacher_probabilities_match_numpy(rng):
    z, c = rng.normal(size=(3, 10)), rng.normal(size=(1, 10))
    got = ops.convert_to_numpy(losses.centered_teacher_probabilities(z, c, 0.04))
    np.testing.assert_allclose(got, np_softmax((z - c) / 0.04), rtol=1e-4, atol=1e-7)


def test_updated_center_is_momentum_average_of_batch_mean(rng):
    c, z = rng.normal(size=(1, 6)), rng.normal(size=(2, 3, 6))
    got = ops.convert_to_numpy(losses.updated_center(c, z, 0.9))
    want = 0.9 * c + 0.1 * z.reshape(-1, 6).mean(0, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def np_sinkhorn(z, tau, iters):
    q = np.exp(z / tau).T  # K x B
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdims=True)
        q /= k
        q /= q.sum(0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_matches_numpy_three_iterations(rng):
    z = rng.uniform(-1, 1, size=(6, 8))
    got = ops.convert_to_numpy(losses.sinkhorn_knopp(z, 0.07, 3))
    np.testing.assert_allclose(got, np_sinkhorn(z, 0.07, 3), rtol=1e-4, atol=1e-7)


def test_sinkhorn_with_weights_ignores_zero_weight_rows(rng):
    z = rng.uniform(-1, 1, size=(6, 8))
    w = np.array([1, 0, 1, 1, 0, 1], np.float32)
    got = ops.convert_to_numpy(losses.sinkhorn_knopp(z, 0.07, 3, weights=w))
    np.testing.assert_allclose(got[w == 1], np_sinkhorn(z[w == 1], 0.07, 3), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(got[w == 0], 0.0)


def test_dino_loss_averages_cross_entropy_over_views_and_images(rng):
    t = np_softmax(rng.normal(size=(4, 10)))
    s = rng.normal(size=(4, 3, 10))
    got = ops.convert_to_numpy(losses.dino_cls_loss(t, s, 0.1))
    np.testing.assert_allclose(got, np_ce(t[:, None], s, 0.1).mean(), rtol=1e-5)


def np_patch_losses(t, s, m, tau_s=0.1):
    ce = np_ce(t, s, tau_s).reshape(len(t), -1)
    m = m.reshape(len(t), -1).astype(np.float64)
    ibot_pp = ce.mean(1).mean()
    ibot = ((ce * m).sum(1) / np.maximum(m.sum(1), 1)).mean()
    return ibot_pp, ibot


@pytest.fixture
def patch_case(rng):
    t = np_softmax(rng.normal(size=(3, 2, 2, 7)))
    s = rng.normal(size=(3, 2, 2, 7))
    m = np.array(
        [[[1, 1], [1, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]], bool
    )
    return t, s, m


def test_ibot_plus_plus_is_uniform_mean_over_all_tokens(patch_case):
    t, s, m = patch_case
    got = ops.convert_to_numpy(losses.patch_loss(t, s, m, "ibot++"))
    np.testing.assert_allclose(got, np_patch_losses(t, s, m)[0], rtol=1e-5)


def test_ibot_averages_masked_tokens_per_image(patch_case):
    t, s, m = patch_case
    got = ops.convert_to_numpy(losses.patch_loss(t, s, m, "ibot"))
    np.testing.assert_allclose(got, np_patch_losses(t, s, m)[1], rtol=1e-5)


def test_ibot_and_ibot_plus_plus_differ_only_in_visible_token_weights(rng):
    # With every token masked both losses weight each token 1/N: equal.
    t = np_softmax(rng.normal(size=(2, 4, 5)))
    s = rng.normal(size=(2, 4, 5))
    all_masked = np.ones((2, 4), bool)
    a = ops.convert_to_numpy(losses.patch_loss(t, s, all_masked, "ibot++"))
    b = ops.convert_to_numpy(losses.patch_loss(t, s, all_masked, "ibot"))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # Changing the student at a visible token moves iBOT++ by exactly
    # (delta CE) / N / B and leaves iBOT unchanged.
    masks = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
    s2 = s.copy()
    s2[0, 3] += rng.normal(size=5) * 3
    delta_ce = np_ce(t[0, 3], s2[0, 3], 0.1) - np_ce(t[0, 3], s[0, 3], 0.1)
    pp = [ops.convert_to_numpy(losses.patch_loss(t, x, masks, "ibot++")) for x in (s, s2)]
    ib = [ops.convert_to_numpy(losses.patch_loss(t, x, masks, "ibot")) for x in (s, s2)]
    np.testing.assert_allclose(pp[1] - pp[0], delta_ce / 4 / 2, rtol=1e-4)
    np.testing.assert_allclose(ib[1], ib[0], rtol=1e-7)


def np_masked_and_visible_means(t, s, m, tau_s=0.1):
    """Per image, one token at a time: the mean cross-entropy over its masked
    tokens and over its visible tokens (0 where it has none)."""
    masked_means, visible_means = [], []
    k = t.shape[-1]
    rows = zip(t.reshape(len(t), -1, k), s.reshape(len(s), -1, k), m.reshape(len(m), -1))
    for ti, si, mi in rows:
        ce = [np_ce(ti[j], si[j], tau_s) for j in range(len(mi))]
        masked = [c for c, is_masked in zip(ce, mi) if is_masked]
        visible = [c for c, is_masked in zip(ce, mi) if not is_masked]
        masked_means.append(np.mean(masked) if masked else 0.0)
        visible_means.append(np.mean(visible) if visible else 0.0)
    return np.array(masked_means), np.array(visible_means)


@pytest.mark.parametrize("visible_weight", [0.0, 1.0, 2.5])
def test_visible_weight_averages_masked_and_visible_tokens_separately(patch_case, visible_weight):
    # patch_case has an image with no masked token and images with 1 and 3
    # of 4 masked: every branch of the per-image normalisation.
    t, s, m = patch_case
    got = ops.convert_to_numpy(losses.patch_loss(t, s, m, "ibot++", visible_weight=visible_weight))
    masked, visible = np_masked_and_visible_means(t, s, m)
    np.testing.assert_allclose(got, np.mean(masked + visible_weight * visible), rtol=1e-5)


def test_visible_weight_zero_is_ibot(patch_case):
    t, s, m = patch_case
    got = ops.convert_to_numpy(losses.patch_loss(t, s, m, "ibot++", visible_weight=0.0))
    np.testing.assert_allclose(got, np_patch_losses(t, s, m)[1], rtol=1e-6)


def test_visible_weight_one_weighs_a_visible_token_three_times_a_masked_one_at_75_percent(rng):
    # One image of 8 tokens, 6 masked: moving the cross-entropy of one token
    # by d moves the loss by d / 6 (masked) or d / 2 (visible).
    t = np_softmax(rng.normal(size=(1, 8, 5)))
    s = rng.normal(size=(1, 8, 5))
    m = np.array([[1, 1, 1, 1, 1, 1, 0, 0]], bool)

    def moved_by(token):
        s2 = s.copy()
        s2[0, token] += 2.0 * rng.normal(size=5)
        d = np_ce(t[0, token], s2[0, token], 0.1) - np_ce(t[0, token], s[0, token], 0.1)
        before, after = (
            float(ops.convert_to_numpy(losses.patch_loss(t, x, m, "ibot++", visible_weight=1.0)))
            for x in (s, s2)
        )
        return (after - before) / d

    np.testing.assert_allclose([moved_by(0), moved_by(7)], [1 / 6, 1 / 2], rtol=1e-4)


def test_visible_mode_averages_visible_tokens_per_image(patch_case):
    t, s, m = patch_case
    got = ops.convert_to_numpy(losses.patch_loss(t, s, m, "visible"))
    np.testing.assert_allclose(got, np.mean(np_masked_and_visible_means(t, s, m)[1]), rtol=1e-5)


def test_supervised_patch_tokens_are_the_tokens_each_mode_trains():
    m = np.array([[True, False, True]])
    assert losses.supervised_patch_tokens(m, "ibot++") is None
    for mode, trained in (("ibot", [[1, 0, 1]]), ("visible", [[0, 1, 0]])):
        weights = ops.convert_to_numpy(losses.supervised_patch_tokens(m, mode))
        np.testing.assert_array_equal(weights, trained)


def test_patch_loss_rejects_unknown_mode(patch_case):
    t, s, m = patch_case
    with pytest.raises(ValueError, match="patch loss mode"):
        losses.patch_loss(t, s, m, "mae")


@pytest.mark.parametrize(
    "mode, visible_weight, masks, message",
    [("ibot", 1.0, True, "only applies to the 'ibot\\+\\+'"), ("ibot++", -1.0, True, ">= 0"),
     ("ibot++", 1.0, None, "needs the student's masks"), ("ibot", None, None, "needs the student's masks")],
)  # fmt: skip
def test_patch_loss_bad_arguments_are_clear_errors(patch_case, mode, visible_weight, masks, message):
    t, s, m = patch_case
    with pytest.raises(ValueError, match=message):
        losses.patch_loss(t, s, m if masks else None, mode, visible_weight=visible_weight)


def test_koleo_matches_numpy(rng):
    x = rng.normal(size=(6, 5))
    xn = np_normalize(x)
    sim = xn @ xn.T - 3 * np.eye(6)
    nn = sim.argmax(1)
    want = -np.log(np.linalg.norm(xn - xn[nn], axis=1) + 1e-8).mean()
    got = ops.convert_to_numpy(losses.koleo_loss(x))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_teacher_temperature_warms_up_linearly_then_stays():
    got = [float(ops.convert_to_numpy(linear_warmup(s, 0.04, 0.07, 30))) for s in (0, 15, 30, 100)]
    np.testing.assert_allclose(got, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)


def test_cosine_increase_reaches_end():
    got = [float(ops.convert_to_numpy(cosine_increase(s, 0.992, 1.0, 10))) for s in (0, 5, 10)]
    np.testing.assert_allclose(got, [0.992, 0.996, 1.0], rtol=1e-6)
