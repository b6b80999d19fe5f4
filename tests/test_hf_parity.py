"""TIPSv2Backbone reproduces transformers' Tipsv2Model from every checkpoint layout.

The oracle is an independent implementation at random weights; the same
weights reach our model through the Hugging Face reader, the official
PyTorch npz reader and the official Scenic npz reader. Float32, <= 1e-4.
"""

import contextlib

import numpy as np
import pytest
from keras import ops

from keras_tipsv2.convert import backbone_from_checkpoint, read_official
from keras_tipsv2 import kernels
from keras_tipsv2.models.tipsv2_inference import inference_scope
from tests import checkpoint_writers as cw

TOLERANCE = 1e-4
SIZES = [(448, 448), (224, 224), (280, 420)]


def _pair(name):
    layout, _, swiglu = name.partition("-")
    model = cw.tiny_hf_model(seed=len(name), layout=layout, swiglu=bool(swiglu))
    return model, cw.backbone_in_layout(model, layout)


@pytest.fixture(scope="module", params=["hf", "pytorch", "scenic"])
def pair(request):
    return _pair(request.param)


# g/14's SwiGLU packing differs per layout; one size covers it.
@pytest.fixture(scope="module", params=["hf-swiglu", "pytorch-swiglu", "scenic-swiglu"])
def swiglu_pair(request):
    return _pair(request.param)


def _text_inputs(rng, vocab=64):
    ids = rng.integers(1, vocab, (3, 12)).astype("int32")
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def _check_images(pair, size, scope=contextlib.nullcontext):
    model, backbone = pair
    images = np.random.default_rng(1).random((2,) + size + (3,)).astype("float32")
    ids, mask = _text_inputs(np.random.default_rng(2))
    cls_ref, patch_ref, _, _ = cw.hf_outputs(model, images, ids, mask)
    with scope():
        out = backbone.encode_images(images)
    cls = ops.convert_to_numpy(out["cls_tokens"])
    patches = ops.convert_to_numpy(out["patch_tokens"])
    assert patches.shape == (2, size[0] // 14, size[1] // 14, 32)
    np.testing.assert_allclose(cls, cls_ref, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(patches.reshape(patch_ref.shape), patch_ref, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_image_tower_matches_reference(pair, size):
    _check_images(pair, size)


def test_image_tower_matches_reference_without_autograd(pair):
    # torch/CPU then takes oneDNN's matmuls (keras_tipsv2.kernels).
    _check_images(pair, (280, 420), scope=inference_scope)


def test_image_tower_matches_reference_with_kernels_off(pair):
    kernels.set_enabled(False)
    try:
        _check_images(pair, (280, 420), scope=inference_scope)
    finally:
        kernels.set_enabled(True)


def test_swiglu_image_tower_matches_reference(swiglu_pair):
    _check_images(swiglu_pair, (280, 420))


def test_text_tower_and_temperature_match_reference(pair):
    model, backbone = pair
    ids, mask = _text_inputs(np.random.default_rng(3))
    images = np.zeros((1, 28, 28, 3), "float32")
    _, _, text_ref, temperature = cw.hf_outputs(model, images, ids, mask)
    text = ops.convert_to_numpy(backbone.encode_text(ids, mask))
    np.testing.assert_allclose(text, text_ref, atol=TOLERANCE, rtol=0)
    with inference_scope():
        text = ops.convert_to_numpy(backbone.encode_text(ids, mask))
    np.testing.assert_allclose(text, text_ref, atol=TOLERANCE, rtol=0)
    assert abs(float(ops.convert_to_numpy(backbone.temperature)) - temperature) < 1e-7


def test_functional_call_matches_encoders(pair):
    _, backbone = pair
    rng = np.random.default_rng(4)
    images = rng.random((2, 56, 84, 3)).astype("float32")
    ids, mask = _text_inputs(rng)
    out = backbone({"images": images[:1], "token_ids": ids[:1], "padding_mask": mask[:1]})
    enc = backbone.encode_images(images[:1])
    # The same math, compiled differently (the public calls are one jit /
    # tf.function, the functional call runs op by op): float32 rounding
    # only. On a Zen 3 CPU, JAX's two paths differ by 1.1e-6 in one value.
    np.testing.assert_allclose(
        ops.convert_to_numpy(out["vision_patch_tokens"]), ops.convert_to_numpy(enc["patch_tokens"]), atol=1e-5
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(out["text_embeddings"]),
        ops.convert_to_numpy(backbone.encode_text(ids[:1], mask[:1])),
        atol=1e-5,
    )


def test_official_layouts_are_read_as_their_reference_semantics():
    model = cw.tiny_hf_model(seed=5, layout="scenic")
    scenic = cw.backbone_in_layout(model, "scenic")
    assert scenic.vision_mlp_activation == "gelu_tanh"
    assert scenic.text_layer_norm_epsilon == 1e-6
    assert not scenic.vision_layer_scale  # Scenic has no LayerScale
    pytorch = cw.backbone_in_layout(cw.tiny_hf_model(seed=6), "pytorch")
    assert pytorch.vision_mlp_activation == "gelu"
    assert pytorch.text_layer_norm_epsilon == 1e-5
    assert pytorch.vision_layer_scale  # random gammas are kept exactly


def test_real_variant_shape_matches_reference():
    # S/14 (v1 "distilled" shape) with the v2 32x32 grid, at 224 px: the
    # smallest published shape, head count inferred from the width.
    model = cw.tiny_hf_model(
        seed=7,
        layout="pytorch",
        vision=dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4),
        text=dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
        scale=0.05,
    )
    v, t = cw.to_official_pytorch(cw.state_numpy(model), 12, 12)
    backbone = backbone_from_checkpoint(read_official(v, t))
    assert backbone.vision_num_heads == 6 and backbone.vision_intermediate_dim == 1536
    images = np.random.default_rng(8).random((1, 224, 224, 3)).astype("float32")
    ids, mask = _text_inputs(np.random.default_rng(9))
    cls_ref, patch_ref, _, _ = cw.hf_outputs(model, images, ids, mask)
    out = backbone.encode_images(images)
    np.testing.assert_allclose(ops.convert_to_numpy(out["cls_tokens"]), cls_ref, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(out["patch_tokens"]).reshape(patch_ref.shape), patch_ref, atol=TOLERANCE, rtol=0
    )
