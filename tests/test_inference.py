"""Compiled inference (models/tipsv2_inference.py): the public calls give the
plain towers' numbers, one cached function per method and configuration."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2 import TIPSv2Backbone
from keras_tipsv2.models import tipsv2_inference
from tests.conftest import tiny_backbone_kwargs

BACKEND = keras.config.backend()


def _close(got, expected, atol=1e-5):
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), ops.convert_to_numpy(expected), atol=atol, rtol=atol
    )


def test_encode_images_matches_the_plain_image_tower(rng):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = rng.random((2, 28, 42, 3)).astype("float32")
    masks = rng.random((2, 2, 3)) > 0.5
    compiled = backbone.encode_images(images, masks=masks)
    plain = backbone.vision_encoder(ops.convert_to_tensor(images), masks=masks)
    for key in ("cls_tokens", "patch_tokens"):
        _close(compiled[key], plain[key])


def test_encode_text_matches_the_plain_text_tower():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    ids = np.array([[5, 9, 3, 0], [7, 1, 0, 0]], "int32")
    mask = (ids > 0).astype("int32")
    plain = backbone.text_encoder(ops.convert_to_tensor(ids), ops.convert_to_tensor(mask))
    _close(backbone.encode_text(ids, mask), plain)


def test_intermediate_layers_match_the_plain_tower(rng):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = rng.random((2, 28, 28, 3)).astype("float32")
    compiled = backbone.get_intermediate_layers(images, [0, 1])
    plain = backbone.vision_encoder.intermediate_layers(ops.convert_to_tensor(images), [0, 1])
    for got, expected in zip(compiled, plain):
        _close(got["patch_tokens"], expected["patch_tokens"])


def test_one_function_per_method_and_configuration(rng):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = rng.random((1, 28, 28, 3)).astype("float32")
    backbone.encode_images(images)
    backbone.encode_images(rng.random((3, 14, 42, 3)).astype("float32"))  # another shape
    backbone.encode_images(images, values_trick="values")
    keys = [key for key, _ in backbone.__dict__[tipsv2_inference._CACHE_ATTRIBUTE]]
    assert keys == [("encode_images", None, True), ("encode_images", "values", True)]


def test_updated_weights_are_read_by_the_cached_function(rng):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = rng.random((1, 28, 28, 3)).astype("float32")
    before = ops.convert_to_numpy(backbone.encode_images(images)["patch_tokens"])
    norm = backbone.vision_encoder.norm
    norm.beta.assign(np.ones(norm.beta.shape, "float32"))
    after = ops.convert_to_numpy(backbone.encode_images(images)["patch_tokens"])
    np.testing.assert_allclose(after - before, 1.0, atol=1e-5)


def test_the_cache_keeps_the_most_recently_used_functions(monkeypatch):
    monkeypatch.setattr(tipsv2_inference, "CACHE_SIZE", 2)

    class Owner:
        pass

    owner = Owner()
    x = np.ones((3,), "float32")
    for key in ("a", "b", "a", "c"):
        got = tipsv2_inference.compiled(owner, key, lambda t, k=key: t * len(k))(x)
        _close(got, x)
    assert [key for key, _ in owner.__dict__[tipsv2_inference._CACHE_ATTRIBUTE]] == ["a", "c"]


def test_symbolic_and_training_calls_run_the_layers_as_they_are():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    out = backbone.encode_images(keras.KerasTensor((None, 28, 28, 3)))
    assert isinstance(out["patch_tokens"], keras.KerasTensor)
    backbone.encode_images(np.ones((1, 28, 28, 3), "float32"), training=True)
    assert tipsv2_inference._CACHE_ATTRIBUTE not in backbone.__dict__


@pytest.mark.skipif(BACKEND != "jax", reason="JAX traces")
def test_a_jax_trace_runs_the_layers_as_they_are():
    import jax

    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = np.ones((1, 28, 28, 3), "float32")
    jax.jit(lambda x: backbone.encode_images(x)["patch_tokens"])(images)
    assert tipsv2_inference._CACHE_ATTRIBUTE not in backbone.__dict__


def test_inference_scope_records_no_gradients():
    variable = keras.Variable(np.ones((2,), "float32"))
    with tipsv2_inference.inference_scope():
        out = variable * 3.0
    if BACKEND == "torch":
        assert not out.requires_grad
    _close(out, [3.0, 3.0])
