"""Without autograd, torch computes the blocks' GELU, ReLU, LayerScale and
residual adds into the block's own temporaries: the same numbers as with
autograd on, and nothing the caller holds is overwritten. On JAX and
TensorFlow nothing is ever written in place."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2 import TIPSv2Backbone
from keras_tipsv2.layers import functional
from keras_tipsv2.layers.compiled_call import inference_scope
from keras_tipsv2.layers.fused_dense import FusedBiasDense
from keras_tipsv2.layers.text_block import TIPSv2TextBlock
from keras_tipsv2.layers.vision_block import TIPSv2VisionBlock
from tests.conftest import tiny_backbone_kwargs

torch_only = pytest.mark.skipif(keras.config.backend() != "torch", reason="in-place ops are torch's")


@pytest.fixture(autouse=True)
def addmm_always(monkeypatch):
    # Without autograd torch's matmuls go to oneDNN, which rounds
    # differently (tests/test_fused_dense.py); here both calls use addmm, so
    # that the in-place ops alone are compared, bit for bit.
    from keras_tipsv2.layers import fused_dense

    monkeypatch.setattr(fused_dense, "_onednn_linear_available", lambda: False)


def _tensor(shape, seed=0):
    return ops.convert_to_tensor(np.random.default_rng(seed).standard_normal(shape).astype("float32"))


def _randomized(layer, seed=1):
    # Random weights everywhere, LayerScale gammas included, so that every
    # branch changes the output.
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3 for w in layer.get_weights()])
    return layer


def _with_and_without_autograd(call, *inputs):
    """(outputs with autograd recording, outputs without, inputs after both)."""
    before = [ops.convert_to_numpy(x).copy() for x in inputs]
    recorded = ops.convert_to_numpy(call(*inputs))
    with inference_scope():
        unrecorded = ops.convert_to_numpy(call(*inputs))
    for x, original in zip(inputs, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(x), original)
    return recorded, unrecorded


def test_overwritable_only_on_torch_without_autograd():
    x = _tensor((2, 3))
    assert not functional.overwritable(x) or keras.config.backend() == "torch"
    with inference_scope():
        assert functional.overwritable(ops.add(x, 1.0)) == (keras.config.backend() == "torch")
    if keras.config.backend() == "torch":
        import torch

        trained = torch.ones(3, requires_grad=True)
        assert not functional.overwritable(trained * 2)  # autograd records it
        with torch.no_grad():
            assert not functional.overwritable(trained)  # a leaf that wants gradients


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "swiglu"])
@pytest.mark.parametrize("values_trick", [None, "values", "values_no_residual"])
def test_vision_block_gives_the_same_numbers_and_keeps_its_input(activation, values_trick):
    block = TIPSv2VisionBlock(16, 2, 32, mlp_activation=activation, layer_scale=True)
    block.build((None, 5, 16))
    _randomized(block)
    recorded, unrecorded = _with_and_without_autograd(
        lambda x: block(x, values_trick=values_trick), _tensor((2, 5, 16))
    )
    np.testing.assert_array_equal(unrecorded, recorded)


def test_text_block_gives_the_same_numbers_and_keeps_its_inputs():
    block = TIPSv2TextBlock(16, 2, 32)
    block.build((None, 6, 16))
    _randomized(block)
    mask = ops.convert_to_tensor(np.array([[1, 1, 1, 0, 0, 0], [1] * 6], "int32"))
    recorded, unrecorded = _with_and_without_autograd(
        lambda x, m: block(x, padding_mask=m), _tensor((2, 6, 16)), mask
    )
    np.testing.assert_array_equal(unrecorded, recorded)
    np.testing.assert_array_equal(unrecorded[0, 3:] - recorded[0, 3:], 0)


def test_relu_dense_gives_the_same_numbers_and_keeps_its_input():
    dense = FusedBiasDense(7, activation="relu")
    dense.build((None, 4))
    _randomized(dense)
    recorded, unrecorded = _with_and_without_autograd(dense, _tensor((3, 4)))
    np.testing.assert_array_equal(unrecorded, recorded)
    assert (unrecorded == 0).any() and (unrecorded > 0).any()


def test_intermediate_layers_are_not_overwritten_by_later_blocks():
    backbone = _randomized(TIPSv2Backbone(**tiny_backbone_kwargs(vision_num_layers=3, vision_layer_scale=True)))
    images = np.random.default_rng(2).random((2, 28, 42, 3)).astype("float32")
    encoder = backbone.vision_encoder
    recorded = encoder.intermediate_layers(images, (0, 1, 2))
    with inference_scope():
        unrecorded = encoder.intermediate_layers(images, (0, 1, 2))
    for a, b in zip(recorded, unrecorded):
        for key in ("cls_tokens", "patch_tokens"):
            np.testing.assert_array_equal(ops.convert_to_numpy(b[key]), ops.convert_to_numpy(a[key]))


@torch_only
def test_add_and_multiply_into_write_only_where_the_result_fits():
    import torch

    with torch.no_grad():
        small, large = torch.ones(3), torch.ones(2, 3)
        # The result is larger than the temporary: computed afresh.
        out = functional.add_into(small, large)
        assert out.shape == (2, 3) and out.data_ptr() != small.data_ptr()
        # Another dtype would be rounded into the temporary's: afresh too.
        out = functional.multiply_into(small, torch.ones(3, dtype=torch.float64))
        assert out.dtype == torch.float64 and (small == 1).all()
        out = functional.add_into(large, small)
        assert out.data_ptr() == large.data_ptr() and (large == 2).all()
