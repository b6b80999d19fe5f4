"""One preset-loading path: every class, every source, through KerasHub's own from_preset.

A random `transformers` Tipsv2Model saved with `save_pretrained` (plus a
tiny SentencePiece model as its tokenizer.model) is loaded by every public
class and by KerasHub's base classes, and the outputs are compared with
transformers' own. Float32, <= 1e-4.
"""

import json
import os
import shutil
import socket
import stat
import time

import keras_hub
import numpy as np
import pytest
from keras import ops

import keras_tipsv2  # noqa: F401  (registers the loader)
from keras_tipsv2 import (
    TIPSv2Backbone,
    TIPSv2DenseSegmenter,
    TIPSv2ImageConverter,
    TIPSv2Preprocessor,
    TIPSv2Tokenizer,
    TIPSv2ZeroShotClassifier,
    TIPSv2ZeroShotSegmenter,
)
from keras_tipsv2.convert import preset_loader
from keras_tipsv2.convert.__main__ import main as convert_main
from tests import checkpoint_writers as cw
from tests.spm_utils import train_tiny_spm

TOLERANCE = 1e-4
PROMPTS = ["a photo of a cat", "a small dog", "the red car"]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(oracle, directory): save_pretrained output plus tokenizer.model."""
    root = tmp_path_factory.mktemp("hf")
    # A vocabulary as large as the tiny SentencePiece model's (150 pieces).
    oracle = cw.tiny_hf_model(seed=21, image_size=56, text=dict(vocab_size=160))
    oracle.save_pretrained(root / "model")
    shutil.copy(train_tiny_spm(str(root)), root / "model" / "tokenizer.model")
    return oracle, str(root / "model")


@pytest.fixture
def images():
    return np.random.default_rng(3).integers(0, 256, (2, 56, 56, 3)).astype("uint8")


def _reference_text(oracle, tokens):
    ids = np.asarray(ops.convert_to_numpy(tokens["token_ids"]))
    mask = np.asarray(ops.convert_to_numpy(tokens["padding_mask"]))
    dummy = np.zeros((1, 14, 14, 3), "float32")
    return cw.hf_outputs(oracle, dummy, ids, mask)[2]


def test_kerashub_base_classes_load_a_transformers_dir(hf_dir):
    _, path = hf_dir
    backbone = keras_hub.models.Backbone.from_preset(path)
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(path)
    converter = keras_hub.layers.ImageConverter.from_preset(path)
    assert isinstance(backbone, TIPSv2Backbone)
    assert isinstance(tokenizer, TIPSv2Tokenizer)
    assert isinstance(converter, TIPSv2ImageConverter)
    # The checkpoint's image size and text length, not the published 448 / 64.
    assert tuple(converter.image_size) == (56, 56)
    assert tokenizer.sequence_length == backbone.text_max_sequence_length == 16


def test_backbone_from_a_transformers_dir_matches_transformers(hf_dir, images):
    oracle, path = hf_dir
    backbone = TIPSv2Backbone.from_preset(path)
    tokens = TIPSv2Tokenizer.from_preset(path)(PROMPTS)
    floats = images.astype("float32") / 255.0
    cls_ref, patch_ref, text_ref, _ = cw.hf_outputs(
        oracle,
        floats,
        np.asarray(ops.convert_to_numpy(tokens["token_ids"])),
        np.asarray(ops.convert_to_numpy(tokens["padding_mask"])),
    )
    out = backbone.encode_images(images)  # uint8: divided by 255 on the way in
    np.testing.assert_allclose(ops.convert_to_numpy(out["cls_tokens"]), cls_ref, atol=TOLERANCE)
    patches = ops.convert_to_numpy(out["patch_tokens"])
    np.testing.assert_allclose(patches.reshape(patch_ref.shape), patch_ref, atol=TOLERANCE)
    text = backbone.encode_text(tokens["token_ids"], tokens["padding_mask"])
    np.testing.assert_allclose(ops.convert_to_numpy(text), text_ref, atol=TOLERANCE)


def test_zero_shot_classifier_from_a_transformers_dir_matches_transformers(hf_dir, images):
    oracle, path = hf_dir
    classifier = TIPSv2ZeroShotClassifier.from_preset(path)
    classifier.set_classes(["cat", "dog", "car"], templates=["a photo of a {}."])
    probabilities = ops.convert_to_numpy(classifier.predict_proba(images))
    converted = np.asarray(ops.convert_to_numpy(classifier.image_converter(images)))
    tokens = classifier.tokenizer(["a photo of a cat.", "a photo of a dog.", "a photo of a car."])
    cls_ref, _, _, temperature = cw.hf_outputs(oracle, converted, np.zeros((1, 1), "int32"), np.ones((1, 1), "int32"))
    logits = _unit(cls_ref[:, 0]) @ _unit(_reference_text(oracle, tokens)).T / temperature
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE)


def test_segmenter_from_a_transformers_dir_scores_like_transformers(hf_dir, images):
    oracle, path = hf_dir
    segmenter = TIPSv2ZeroShotSegmenter.from_preset(path)
    # Defaults follow the preset's image size: 56 px, windows 56 / 42.
    assert (segmenter.short_side, segmenter.window_size, segmenter.window_stride) == (56, 56, 42)
    segmenter.set_classes(["cat", "dog"], templates=["a photo of a {}."])
    result = segmenter.segment(images[0], mode="whole", values_trick=None, output_size=(4, 4))
    tokens = segmenter.tokenizer(["a photo of a cat.", "a photo of a dog."])
    _, patch_ref, _, _ = cw.hf_outputs(
        oracle, images[:1].astype("float32") / 255.0, np.zeros((1, 1), "int32"), np.ones((1, 1), "int32")
    )
    expected = _unit(patch_ref[0]) @ _unit(_reference_text(oracle, tokens)).T
    np.testing.assert_allclose(result["scores"].reshape(16, 2), expected, atol=TOLERANCE)


def test_preprocessor_and_dense_task_load_from_a_transformers_dir(hf_dir, images):
    _, path = hf_dir
    preprocessor = TIPSv2Preprocessor.from_preset(path)
    out = preprocessor({"images": images, "prompts": PROMPTS})
    assert tuple(out["images"].shape) == (2, 56, 56, 3)
    assert tuple(out["token_ids"].shape) == (3, 16)
    task = TIPSv2DenseSegmenter.from_preset(path, num_classes=3, head_type="linear")
    reference = TIPSv2Backbone.from_preset(path)
    for got, want in zip(task.backbone.weights, reference.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(got), ops.convert_to_numpy(want))
    assert tuple(task.predict(images.astype("float32") / 255.0, verbose=0).shape) == (2, 56, 56, 3)


def test_an_hf_handle_loads_through_the_hub_client(hf_dir, monkeypatch):
    import huggingface_hub

    oracle, path = hf_dir
    asked = []

    def download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        local = os.path.join(path, filename)
        if not os.path.exists(local):
            raise huggingface_hub.errors.EntryNotFoundError(filename)
        return local

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    backbone = keras_hub.models.Backbone.from_preset("hf://someone/tipsv2-tiny")
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset("hf://someone/tipsv2-tiny")
    assert isinstance(tokenizer, TIPSv2Tokenizer)
    assert ("someone/tipsv2-tiny", "model.safetensors") in asked
    images = np.random.default_rng(4).random((1, 56, 56, 3)).astype("float32")
    cls_ref = cw.hf_outputs(oracle, images, np.zeros((1, 1), "int32"), np.ones((1, 1), "int32"))[0]
    np.testing.assert_allclose(
        ops.convert_to_numpy(backbone.encode_images(images)["cls_tokens"]), cls_ref, atol=TOLERANCE
    )


def test_the_official_npz_pair_loads_through_kerashub(tmp_path):
    # Width 384, a published width: the npz layout does not record heads.
    oracle = cw.tiny_hf_model(
        seed=22, image_size=28,
        vision=dict(hidden_size=384, num_hidden_layers=1, num_attention_heads=6, mlp_ratio=1),
        text=dict(hidden_size=384, num_hidden_layers=1, num_attention_heads=6,
                  intermediate_size=64, vocab_size=160, max_position_embeddings=64),
    )  # fmt: skip
    vision, text = cw.to_official_pytorch(cw.state_numpy(oracle), 1, 1)
    (tmp_path / "pytorch").mkdir()
    np.savez(tmp_path / "pytorch" / "m_vision.npz", **vision)
    np.savez(tmp_path / "pytorch" / "m_text.npz", **text)
    # One folder up, where the official release keeps it.
    shutil.copy(train_tiny_spm(str(tmp_path)), tmp_path / "tokenizer.model")
    preset = f"tips-npz://{tmp_path}/pytorch/m"
    backbone = keras_hub.models.Backbone.from_preset(preset)
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    assert tuple(converter.image_size) == (28, 28)  # 2x2 positions of 14 px
    images = np.random.default_rng(5).random((1, 28, 28, 3)).astype("float32")
    tokens = tokenizer(PROMPTS)
    cls_ref, _, text_ref, _ = cw.hf_outputs(
        oracle, images,
        np.asarray(ops.convert_to_numpy(tokens["token_ids"])),
        np.asarray(ops.convert_to_numpy(tokens["padding_mask"])),
    )  # fmt: skip
    np.testing.assert_allclose(
        ops.convert_to_numpy(backbone.encode_images(images)["cls_tokens"]), cls_ref, atol=TOLERANCE
    )
    text_out = backbone.encode_text(tokens["token_ids"], tokens["padding_mask"])
    np.testing.assert_allclose(ops.convert_to_numpy(text_out), text_ref, atol=TOLERANCE)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every connection fails at once; nothing is cached."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))


LOADERS = {
    "Backbone": lambda p: keras_hub.models.Backbone.from_preset(p),
    "Tokenizer": lambda p: keras_hub.tokenizers.Tokenizer.from_preset(p),
    "ImageConverter": lambda p: keras_hub.layers.ImageConverter.from_preset(p),
    "Segmenter": lambda p: TIPSv2ZeroShotSegmenter.from_preset(p),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("name", ["tipsv2_b14", "tips_b14_highres"])
def test_published_names_fail_offline_within_two_seconds(no_network, name, loader):
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="python -m keras_tipsv2.convert") as info:
        LOADERS[loader](name)
    assert time.monotonic() - start < 2.0
    assert name in str(info.value)


def test_hub_offline_mode_fails_at_once(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="--hf HF_CHECKPOINT_DIR"):
        TIPSv2Tokenizer.from_preset("tipsv2_l14")
    assert time.monotonic() - start < 2.0


def test_every_kerashub_from_preset_goes_through_the_tipsv2_loader():
    # Fails if KerasHub moves or renames the function its from_preset calls.
    from keras_hub.src.utils import preset_utils

    wrapped = {
        "keras_hub.src.utils.preset_utils",
        "keras_hub.src.models.backbone",
        "keras_hub.src.models.task",
        "keras_hub.src.models.preprocessor",
        "keras_hub.src.tokenizers.tokenizer",
        "keras_hub.src.layers.preprocessing.image_converter",
    }
    assert wrapped <= set(preset_loader.register())  # idempotent: same modules again
    import sys

    for name in wrapped:
        function = sys.modules[name].get_preset_loader
        assert function is preset_utils.get_preset_loader, name
        assert function.__wrapped__.__module__ == "keras_hub.src.utils.preset_utils"
        assert function.__wrapped__.__name__ == "get_preset_loader"


def test_other_presets_are_left_to_kerashub(tmp_path):
    for config in ({"model_type": "bert"}, {"registered_name": "keras_hub>BertBackbone"}):
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert preset_loader.tipsv2_loader(str(tmp_path)) is None
    # KerasHub's own loader answers for a model type it does not know.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    with pytest.raises(ValueError, match="no converter.*'no_such_model'"):
        keras_hub.models.Backbone.from_preset(str(tmp_path))


def test_converted_preset_has_the_checkpoint_image_size_and_readable_files(hf_dir, tmp_path):
    _, path = hf_dir
    out = tmp_path / "preset"
    assert convert_main(["--hf", path, "--output", str(out)]) == 0
    assert tuple(TIPSv2ImageConverter.from_preset(str(out)).image_size) == (56, 56)
    assert TIPSv2Tokenizer.from_preset(str(out)).sequence_length == 16
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask


def test_conversion_without_a_tokenizer_names_the_flag(hf_dir, tmp_path, capsys):
    _, path = hf_dir
    bare = tmp_path / "bare"
    shutil.copytree(path, bare, ignore=shutil.ignore_patterns("tokenizer.model"))
    assert convert_main(["--hf", str(bare), "--output", str(tmp_path / "p")]) == 1
    assert "--tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_preprocessor_pads_to_the_presets_text_length():
    preprocessor = TIPSv2Preprocessor.from_preset("tipsv2_tiny_shapes")
    backbone = TIPSv2Backbone.from_preset("tipsv2_tiny_shapes")
    assert preprocessor.sequence_length == backbone.text_max_sequence_length == 48
    images = np.zeros((1, 64, 64, 3), "uint8")
    outputs = backbone(preprocessor({"images": images, "prompts": ["a red circle"]}))
    assert tuple(outputs["text_embeddings"].shape) == (1, 128)


def test_dense_task_presets_hold_the_head_alone(tmp_path):
    from tests.conftest import tiny_backbone_kwargs

    task = TIPSv2DenseSegmenter(
        TIPSv2Backbone(**tiny_backbone_kwargs()), num_classes=3, head_type="linear"
    )
    task.compile()
    images = np.random.default_rng(6).random((2, 28, 28, 3)).astype("float32")
    task.fit(images, np.zeros((2, 28, 28), "int32"), epochs=1, verbose=0)
    task.save_to_preset(str(tmp_path / "task"))
    with open(tmp_path / "task" / "metadata.json") as f:
        assert f.read().count("_TIPSv2") == 0
    # The head: one Dense of 32 x 3 + 3 values, no optimizer state.
    from keras_tipsv2.convert.weights_file import saved_arrays

    assert sorted(saved_arrays(str(tmp_path / "task" / "task.weights.h5")).values()) == [(3,), (32, 3)]
    loaded = TIPSv2DenseSegmenter.from_preset(str(tmp_path / "task"))
    np.testing.assert_allclose(loaded.predict(images, verbose=0), task.predict(images, verbose=0), atol=1e-6)
    # Every backend counts the same weights: both towers, the head.
    backbone_params = TIPSv2Backbone(**tiny_backbone_kwargs()).count_params()
    assert loaded.count_params() == backbone_params + 32 * 3 + 3
