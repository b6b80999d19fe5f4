"""TIPSv2Backbone as a KerasHub backbone: harness, public calls, bad input."""

import json

import keras
import numpy as np
import pytest
from keras import ops
from keras_hub.src.tests.test_case import TestCase

from keras_tipsv2 import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_vision_encoder import TIPSv2VisionEncoder
from tests.conftest import tiny_backbone_kwargs


def _input_data():
    return {
        "images": ops.ones((2, 56, 42, 3)),
        "token_ids": ops.ones((2, 8), dtype="int32"),
        "padding_mask": ops.convert_to_tensor(
            np.array([[1] * 8, [1] * 3 + [0] * 5], "int32")
        ),
    }


class TIPSv2BackboneHarnessTest(TestCase):
    def test_backbone_basics(self):
        self.run_backbone_test(
            cls=TIPSv2Backbone,
            init_kwargs=tiny_backbone_kwargs(),
            input_data=_input_data(),
            expected_output_shape={
                "vision_cls_tokens": (2, 2, 32),
                "vision_patch_tokens": (2, 4, 3, 32),
                "text_embeddings": (2, 32),
            },
        )

    def test_saved_model(self):
        self.run_model_saving_test(
            cls=TIPSv2Backbone,
            init_kwargs=tiny_backbone_kwargs(),
            input_data=_input_data(),
        )

    def test_preset_round_trip(self):
        backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
        preset = self.get_temp_dir()
        backbone.save_to_preset(preset)
        self.run_preset_test(
            cls=TIPSv2Backbone,
            preset=preset,
            input_data=_input_data(),
            expected_output=backbone(_input_data()),
        )

    def test_generic_backbone_loader_finds_the_registered_class(self):
        backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
        preset = self.get_temp_dir()
        backbone.save_to_preset(preset)
        import keras_hub

        revived = keras_hub.models.Backbone.from_preset(preset)
        self.assertIsInstance(revived, TIPSv2Backbone)
        self.assertAllClose(revived(_input_data()), backbone(_input_data()))


def test_encode_images_runs_only_the_image_tower(monkeypatch):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    calls = []
    original = type(backbone.text_encoder).call
    monkeypatch.setattr(
        type(backbone.text_encoder), "call", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    out = backbone.encode_images(np.random.rand(1, 28, 56, 3).astype("float32"))
    assert out["patch_tokens"].shape == (1, 2, 4, 32)
    assert calls == []


def test_encode_text_runs_only_the_text_tower(monkeypatch):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    calls = []
    original = TIPSv2VisionEncoder.call
    monkeypatch.setattr(
        TIPSv2VisionEncoder, "call", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    backbone.encode_text(np.ones((2, 5), "int32"), np.ones((2, 5), "int32"))
    assert calls == []


def test_all_padding_text_row_is_finite():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    ids = np.zeros((2, 6), "int32")
    mask = np.array([[0] * 6, [1, 1, 0, 0, 0, 0]], "int32")
    out = ops.convert_to_numpy(backbone.encode_text(ids, mask))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], 0.0)  # nothing to pool


def test_padding_does_not_change_the_text_embedding():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    ids = np.array([[5, 9, 3]], "int32")
    short = backbone.encode_text(ids, np.ones_like(ids))
    padded_ids = np.array([[5, 9, 3, 0, 0, 0, 0]], "int32")
    padded = backbone.encode_text(padded_ids, (padded_ids > 0).astype("int32"))
    np.testing.assert_allclose(ops.convert_to_numpy(short), ops.convert_to_numpy(padded), atol=1e-6)


def test_sides_not_multiple_of_patch_are_centre_padded():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = np.random.default_rng(0).random((1, 50, 30, 3)).astype("float32")
    padded = np.zeros((1, 56, 42, 3), "float32")
    padded[:, 3:53, 6:36] = images  # pad 6 -> 3 + 3, pad 12 -> 6 + 6
    a = backbone.encode_images(images)["patch_tokens"]
    b = backbone.encode_images(padded)["patch_tokens"]
    np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-6)


def test_mask_token_replaces_masked_patches_only():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(vision_num_layers=0))
    images = np.random.default_rng(0).random((1, 28, 28, 3)).astype("float32")
    masks = np.array([[[True, False], [False, False]]])
    plain = ops.convert_to_numpy(backbone.encode_images(images)["patch_tokens"])
    masked = ops.convert_to_numpy(backbone.encode_images(images, masks=masks)["patch_tokens"])
    assert not np.allclose(plain[0, 0, 0], masked[0, 0, 0])
    np.testing.assert_allclose(plain[0, 1], masked[0, 1], atol=1e-6)


def test_intermediate_layers_end_with_the_final_output():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(vision_num_layers=3))
    images = np.random.default_rng(0).random((1, 28, 42, 3)).astype("float32")
    layers = backbone.get_intermediate_layers(images, [0, 2])
    final = backbone.encode_images(images)
    assert len(layers) == 2 and layers[0]["patch_tokens"].shape == (1, 2, 3, 32)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layers[1]["patch_tokens"]), ops.convert_to_numpy(final["patch_tokens"]), atol=1e-6
    )


def test_values_trick_changes_only_the_last_block():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(vision_num_layers=1))
    images = np.random.default_rng(0).random((1, 28, 28, 3)).astype("float32")
    normal = ops.convert_to_numpy(backbone.encode_images(images)["patch_tokens"])
    trick = ops.convert_to_numpy(backbone.encode_images(images, values_trick="values")["patch_tokens"])
    # One block: the values trick is attention replaced by the identity matrix.
    emb = backbone.vision_encoder.embedding(images)
    block = backbone.vision_encoder.blocks[0]
    x = emb + block.attention.proj(ops.split(block.attention.qkv(block.norm1(emb)), 3, axis=-1)[2])
    x = x + block.mlp(block.norm2(x))
    expected = ops.convert_to_numpy(backbone.vision_encoder.norm(x))[:, 2:].reshape(trick.shape)
    np.testing.assert_allclose(trick, expected, atol=1e-5)
    assert not np.allclose(normal, trick)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((28, 28, 3), "float32"), "batch, height, width, 3"),
        (np.zeros((1, 28, 28, 4), "float32"), "batch, height, width, 3"),
    ],
)
def test_wrong_image_shape_fails_clearly(images, message):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    with pytest.raises(ValueError, match=message):
        backbone.encode_images(images)


def test_text_over_max_length_fails_clearly():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    ids = np.ones((1, 17), "int32")
    with pytest.raises(ValueError, match="max_sequence_length=16"):
        backbone.encode_text(ids, ids)


def test_mismatched_widths_fail_clearly():
    with pytest.raises(ValueError, match="must equal"):
        TIPSv2Backbone(**tiny_backbone_kwargs(text_hidden_dim=48))


def test_bfloat16_inference_runs():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(), dtype="bfloat16")
    out = backbone.encode_images(np.random.rand(1, 28, 28, 3).astype("float32"))
    assert "bfloat16" in str(out["patch_tokens"].dtype)
    text = backbone.encode_text(np.ones((1, 4), "int32"), np.ones((1, 4), "int32"))
    assert "bfloat16" in str(text.dtype)
    assert np.isfinite(ops.convert_to_numpy(ops.cast(out["cls_tokens"], "float32"))).all()


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch predict runs eagerly")
def test_predict_compiles_once_per_input_shape(monkeypatch):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    traces = []
    original = TIPSv2VisionEncoder.call
    monkeypatch.setattr(
        TIPSv2VisionEncoder, "call", lambda self, *a, **k: traces.append(1) or original(self, *a, **k)
    )
    data = {k: ops.convert_to_numpy(v) for k, v in _input_data().items()}
    backbone.predict(data, batch_size=2, verbose=0)
    first = len(traces)
    backbone.predict(data, batch_size=2, verbose=0)
    backbone.predict(data, batch_size=2, verbose=0)
    assert first >= 1 and len(traces) == first


def test_temperature_is_trained_and_saved_with_the_weights(tmp_path):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(), initial_temperature=0.07)
    log_t = backbone.contrastive_temperature.log_temperature
    assert any(v is log_t for v in backbone.trainable_variables)
    log_t.assign(np.log(0.0123).astype("float32"))
    backbone.save_to_preset(str(tmp_path))
    revived = TIPSv2Backbone.from_preset(str(tmp_path))
    assert abs(float(ops.convert_to_numpy(revived.temperature)) - 0.0123) < 1e-7


def test_small_layer_scale_init_starts_each_token_as_its_own_embedding(rng):
    # DINOv2's LayerScale init (1e-5): at step 0 no block mixes tokens, so
    # each output token is its own normed patch embedding.
    kwargs = tiny_backbone_kwargs(vision_layer_scale=True, vision_layer_scale_init=1e-5)
    backbone = TIPSv2Backbone(**kwargs)
    encoder = backbone.vision_encoder
    for block in encoder.blocks:
        for scale in (block.ls1, block.ls2):
            np.testing.assert_allclose(ops.convert_to_numpy(scale.gamma), 1e-5, rtol=1e-6)
    images = rng.uniform(size=(2, 28, 42, 3)).astype("float32")
    tokens = encoder.norm(encoder.embedding(images))
    expected = ops.reshape(tokens[:, 2:], (2, 2, 3, 32))
    np.testing.assert_allclose(
        ops.convert_to_numpy(encoder(images)["patch_tokens"]),
        ops.convert_to_numpy(expected),
        atol=1e-3,
    )
    revived = TIPSv2Backbone.from_config(backbone.get_config())
    assert revived.vision_encoder.blocks[0].ls1.init_value == 1e-5


def test_layer_scale_init_takes_one_value_per_block(tmp_path):
    # The tiny recipe starts every block near zero except the last, whose
    # value path the TIPS zero-shot protocol reads beside its residual.
    kwargs = tiny_backbone_kwargs(
        vision_layer_scale=True, vision_layer_scale_init=[1e-5, 1.0]
    )
    backbone = TIPSv2Backbone(**kwargs)
    gammas = [
        float(ops.convert_to_numpy(block.ls2.gamma)[0])
        for block in backbone.vision_encoder.blocks
    ]
    np.testing.assert_allclose(gammas, [1e-5, 1.0], rtol=1e-6)
    backbone.save_to_preset(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)["config"]["vision_layer_scale_init"]
    assert saved == [1e-5, 1.0]
    revived = TIPSv2Backbone.from_config(backbone.get_config())
    assert [b.ls1.init_value for b in revived.vision_encoder.blocks] == [1e-5, 1.0]


def test_layer_scale_init_list_must_match_the_depth():
    kwargs = tiny_backbone_kwargs(
        vision_layer_scale=True, vision_layer_scale_init=[1e-5, 1e-5, 1.0]
    )
    with pytest.raises(ValueError, match="3 values but the tower has 2 blocks"):
        TIPSv2Backbone(**kwargs)
