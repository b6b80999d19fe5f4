import numpy as np
import pytest
from keras import ops

from keras_tipsv2.layers.projection_head import TIPSv2ProjectionHead
from keras_tipsv2.training.ema import head_parameter_count


def make_head(**kwargs):
    head = TIPSv2ProjectionHead(hidden_dim=16, bottleneck_dim=8, num_prototypes=12, **kwargs)
    head.build((None, 6))
    return head


def np_gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def test_head_matches_numpy_mlp_normalise_weight_normed_prototypes(rng):
    head = make_head()
    x = rng.normal(size=(3, 6)).astype("float32")
    (w0, b0), (w1, b1), (w2, b2) = [
        (ops.convert_to_numpy(d.kernel), ops.convert_to_numpy(d.bias)) for d in head.mlp
    ]
    h = np_gelu(x @ w0 + b0)
    h = np_gelu(h @ w1 + b1)
    h = h @ w2 + b2
    h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    v = ops.convert_to_numpy(head.prototypes)
    want = h @ (v / np.linalg.norm(v, axis=0, keepdims=True))
    np.testing.assert_allclose(ops.convert_to_numpy(head(x)), want, rtol=1e-4, atol=1e-5)


def test_logits_are_cosines_invariant_to_prototype_scale(rng):
    head = make_head()
    x = rng.normal(size=(2, 4, 6)).astype("float32")
    before = ops.convert_to_numpy(head(x))
    assert before.shape == (2, 4, 12)
    assert np.abs(before).max() <= 1.0 + 1e-5
    head.prototypes.assign(head.prototypes * 7.0)
    np.testing.assert_allclose(ops.convert_to_numpy(head(x)), before, rtol=1e-5, atol=1e-6)


def test_head_has_no_prototype_bias_or_gain_parameters():
    head = make_head(num_layers=2)
    assert len(head.weights) == 2 * 2 + 1
    count = sum(int(np.prod(w.shape)) for w in head.weights)
    assert count == head_parameter_count(6, 16, 8, 12, num_layers=2)


def test_head_round_trips_through_config(rng):
    head = make_head()
    clone = TIPSv2ProjectionHead.from_config(head.get_config())
    clone.build((None, 6))
    clone.set_weights(head.get_weights())
    x = rng.normal(size=(2, 6)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(clone(x)), ops.convert_to_numpy(head(x)), rtol=1e-6)


def test_zero_layers_is_rejected():
    with pytest.raises(ValueError, match="num_layers"):
        TIPSv2ProjectionHead(num_layers=0)
