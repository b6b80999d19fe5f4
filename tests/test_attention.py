"""TIPSv2Attention: softmax attention over a fused qkv projection, masked
keys, the values trick and a caller's attention function."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.layers.attention import TIPSv2Attention


def _layer_and_inputs(seed=0, tokens=9):
    layer = TIPSv2Attention(24, 3)
    x = np.random.default_rng(seed).standard_normal((2, tokens, 24)).astype("float32")
    layer.build(x.shape)
    return layer, ops.convert_to_tensor(x)


def _reference(layer, x, key_mask=None):
    """softmax(q k^T / sqrt(hd)) v in NumPy, from the layer's own weights."""
    x = ops.convert_to_numpy(x)
    qkv = x @ ops.convert_to_numpy(layer.qkv.kernel) + ops.convert_to_numpy(layer.qkv.bias)
    b, n, _ = x.shape
    q, k, v = (t.reshape(b, n, 3, 8).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, -1))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(8)
    if key_mask is not None:
        logits = np.where(key_mask[:, None, None, :] > 0, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, 24)
    return out @ ops.convert_to_numpy(layer.proj.kernel) + ops.convert_to_numpy(layer.proj.bias)


def test_equals_softmax_attention_over_the_fused_projection():
    layer, x = _layer_and_inputs()
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x)), _reference(layer, x), atol=1e-5, rtol=1e-5
    )


def test_a_key_mask_attends_over_the_real_keys_only():
    layer, x = _layer_and_inputs(seed=1)
    key_mask = np.array([[1] * 6 + [0] * 3, [1] * 9], "int32")
    got = ops.convert_to_numpy(layer(x, key_mask=key_mask))
    np.testing.assert_allclose(got, _reference(layer, x, key_mask), atol=1e-5, rtol=1e-5)


def test_a_row_without_real_keys_stays_finite():
    layer, x = _layer_and_inputs(seed=2)
    got = ops.convert_to_numpy(layer(x, key_mask=np.zeros((2, 9), "int32")))
    assert np.isfinite(got).all()


def test_the_values_trick_projects_each_tokens_own_value():
    layer, x = _layer_and_inputs(seed=3)
    qkv = ops.convert_to_numpy(layer.qkv(x))
    expected = qkv[..., 48:] @ ops.convert_to_numpy(layer.proj.kernel) + ops.convert_to_numpy(
        layer.proj.bias
    )
    got = ops.convert_to_numpy(layer(x, values_only=True))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_a_given_attention_function_replaces_the_unmasked_kernel():
    layer, x = _layer_and_inputs(seed=4)
    seen = []

    def attention_fn(query, key, value, scale):
        seen.append((tuple(query.shape), scale))
        return ops.dot_product_attention(query, key, value, scale=scale)

    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x, attention_fn=attention_fn)),
        ops.convert_to_numpy(layer(x)),
        atol=1e-6,
    )
    assert seen == [((2, 9, 3, 8), 8**-0.5)]
    # Masked attention keeps the masked kernel.
    layer(x, key_mask=np.ones((2, 9), "int32"), attention_fn=attention_fn)
    assert len(seen) == 1


def test_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="not divisible"):
        TIPSv2Attention(25, 3)


def test_config_round_trips():
    layer = TIPSv2Attention(24, 3, name="attention")
    restored = TIPSv2Attention.from_config(layer.get_config())
    assert (restored.hidden_dim, restored.num_heads, restored.name) == (24, 3, "attention")
    assert keras.saving.get_registered_name(TIPSv2Attention) == "keras_tipsv2>TIPSv2Attention"
