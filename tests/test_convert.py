"""The conversion CLI, preset loading from checkpoints, and bad checkpoints."""

import os
import tracemalloc

import numpy as np
import pytest
from keras import ops

from keras_tipsv2 import TIPSv2Backbone
from keras_tipsv2.convert import CheckpointError, read_official
from keras_tipsv2.convert.__main__ import main as convert_main
from tests import checkpoint_writers as cw
from tests.spm_utils import train_tiny_spm


@pytest.fixture(scope="module")
def oracle():
    return cw.tiny_hf_model(seed=11, image_size=56)


@pytest.fixture(scope="module")
def official_npz(oracle, tmp_path_factory):
    vision, text = cw.to_official_pytorch(cw.state_numpy(oracle), 2, 2)
    root = tmp_path_factory.mktemp("npz")
    np.savez(root / "m_vision.npz", **vision)
    np.savez(root / "m_text.npz", **text)
    return str(root / "m_vision.npz"), str(root / "m_text.npz"), vision, text


def _reference_patches(oracle, images):
    _, patches, _, _ = cw.hf_outputs(oracle, images, np.ones((1, 2), "int32"), np.ones((1, 2), "int32"))
    return patches


def test_cli_writes_a_preset_that_reproduces_the_reference(oracle, official_npz, tmp_path):
    vision, text, _, _ = official_npz
    out = tmp_path / "preset"
    code = convert_main(
        ["--vision", vision, "--text", text, "--tokenizer", train_tiny_spm(str(tmp_path)),
         "--output", str(out), "--num-heads", "4"]
    )
    assert code == 0
    assert {"config.json", "metadata.json", "model.weights.h5", "tokenizer.json"} <= set(os.listdir(out))
    assert os.path.exists(out / "assets" / "tokenizer" / "vocabulary.spm")
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(str(out))
    assert isinstance(backbone, TIPSv2Backbone)
    images = np.random.default_rng(0).random((1, 56, 56, 3)).astype("float32")
    patches = ops.convert_to_numpy(backbone.encode_images(images)["patch_tokens"])
    np.testing.assert_allclose(patches.reshape(1, -1, 32), _reference_patches(oracle, images), atol=1e-4)
    # The shipped tokenizer pads to the text tower's length.
    from keras_tipsv2 import TIPSv2Tokenizer

    tokenizer = TIPSv2Tokenizer.from_preset(str(out))
    assert tokenizer.sequence_length == backbone.text_max_sequence_length == 64


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_transformers_checkpoint_dir_loads_directly_and_converts(swiglu, tmp_path):
    # save_pretrained writes the hub's key names (official names under
    # vision_encoder. / text_encoder.), which is what hf:// handles hold.
    oracle = cw.tiny_hf_model(seed=12, image_size=56, swiglu=swiglu)
    oracle.save_pretrained(tmp_path / "hf")
    backbone = TIPSv2Backbone.from_preset(str(tmp_path / "hf"))
    images = np.random.default_rng(1).random((1, 56, 56, 3)).astype("float32")
    patches = ops.convert_to_numpy(backbone.encode_images(images)["patch_tokens"])
    np.testing.assert_allclose(patches.reshape(1, -1, 32), _reference_patches(oracle, images), atol=1e-4)
    spm = train_tiny_spm(str(tmp_path))
    assert convert_main(
        ["--hf", str(tmp_path / "hf"), "--tokenizer", spm, "--output", str(tmp_path / "p")]
    ) == 0
    converted = TIPSv2Backbone.from_preset(str(tmp_path / "p"))
    assert converted.vision_position_grid == (4, 4)
    # A shortened text tower (16 positions here) gets a tokenizer padding to 16.
    from keras_tipsv2 import TIPSv2Tokenizer

    tokenizer = TIPSv2Tokenizer.from_preset(str(tmp_path / "p"))
    assert tokenizer.sequence_length == converted.text_max_sequence_length == 16
    tokens = tokenizer(["a photo of a cat"])
    ids = np.minimum(ops.convert_to_numpy(tokens["token_ids"]), 63)  # the oracle's vocabulary is 64
    assert converted.encode_text(ids, tokens["padding_mask"]).shape == (1, 32)


def test_a_missing_key_is_named(official_npz):
    _, _, vision, text = official_npz
    broken = dict(vision)
    del broken["blocks.1.norm2.weight"]
    with pytest.raises(CheckpointError, match=r"missing key 'blocks\.1\.norm2\.weight'"):
        read_official(broken, text, num_heads=4)


def test_an_extra_key_is_named(official_npz):
    _, _, vision, text = official_npz
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) 'blocks\.0\.extra\.bias' \(3,\)"):
        read_official({**vision, "blocks.0.extra.bias": np.zeros(3)}, text, num_heads=4)


def test_a_misshaped_key_is_named_with_both_shapes(official_npz):
    from keras_tipsv2.convert import backbone_from_checkpoint

    _, _, vision, text = official_npz
    broken = {**vision, "blocks.0.mlp.fc2.bias": np.zeros(31, "float32")}
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.mlp\.fc2'.*\(31,\).*\(32,\)"):
        backbone_from_checkpoint(read_official(broken, text, num_heads=4))


def test_swapped_files_are_reported(official_npz):
    _, _, vision, text = official_npz
    with pytest.raises(CheckpointError, match="swapped"):
        read_official(text, vision)


def test_failed_conversion_leaves_no_output(official_npz, tmp_path):
    vision, text, v, t = official_npz
    broken = tmp_path / "bad_vision.npz"
    np.savez(broken, **{k: a for k, a in v.items() if k != "norm.bias"})
    out = tmp_path / "never"
    spm = train_tiny_spm(str(tmp_path))
    assert convert_main(
        ["--vision", str(broken), "--text", text, "--tokenizer", spm, "--output", str(out), "--num-heads", "4"]
    ) == 1
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tipsv2")] == []


def test_existing_output_is_not_overwritten(official_npz, tmp_path):
    vision, text, _, _ = official_npz
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    spm = train_tiny_spm(str(tmp_path))
    assert convert_main(
        ["--vision", vision, "--text", text, "--tokenizer", spm, "--output", str(out), "--num-heads", "4"]
    ) == 1
    assert (out / "keep.txt").read_text() == "mine"


def test_conversion_reads_one_tensor_at_a_time(tmp_path):
    # Arrays are converted lazily, one at a time, straight into the model: the
    # host memory the conversion adds stays far below the checkpoint's size
    # (the bound that makes g/14 convert in ~2x its size: file + model). The
    # model is wide enough (~4 MB) that the interpreter's own allocations
    # during the load (~0.2 MB) cannot decide the comparison.
    from keras_tipsv2.convert import load_npz

    oracle = cw.tiny_hf_model(
        seed=13, image_size=56,
        vision=dict(hidden_size=128, mlp_ratio=4),
        text=dict(hidden_size=128, intermediate_size=512),
    )
    vision, text = cw.to_official_pytorch(cw.state_numpy(oracle), 2, 2)
    vision_path, text_path = str(tmp_path / "v.npz"), str(tmp_path / "t.npz")
    np.savez(vision_path, **vision)
    np.savez(text_path, **text)
    checkpoint_bytes = sum(a.nbytes for a in vision.values()) + sum(a.nbytes for a in text.values())
    largest = max(a.nbytes for a in list(vision.values()) + list(text.values()))
    checkpoint = read_official(load_npz(vision_path), load_npz(text_path), num_heads=4)
    backbone = TIPSv2Backbone(**checkpoint.config)
    from keras_tipsv2.convert import load_checkpoint

    tracemalloc.start()
    load_checkpoint(backbone, checkpoint)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # What is still allocated afterwards belongs to the model: on TensorFlow,
    # after this file's other tests, its variables kept 1.5-1.9 MB of the
    # buffers they were assigned from (all freed with the model). The
    # conversion's own overhead is the rise above that.
    assert peak - kept < 4 * largest + 1_000_000 < checkpoint_bytes * 10
    assert peak < checkpoint_bytes


def test_published_presets_are_listed():
    assert {"tipsv2_b14", "tipsv2_l14", "tipsv2_so400m14", "tipsv2_g14", "tips_s14_highres"} <= set(
        TIPSv2Backbone.presets
    )
