"""ShapesWorldBatches: the TensorFlow-free ShapesWorld pretraining source."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_tipsv2.shapes import ShapesWorld
from keras_tipsv2.shapes import ShapesWorldBatches
from keras_tipsv2.data.pipeline import make_pretraining_dataset
from keras_tipsv2.shapes.examples import shapes_examples
from keras_tipsv2.shapes.batches import random_crop_box
from keras_tipsv2.shapes.tokenizer import train_shapes_tokenizer
from keras_tipsv2.models.tipsv2_tokenizer import ascii_lower
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = ShapesWorld(image_size=24, seed=2)


@pytest.fixture(scope="module")
def proto():
    return train_shapes_tokenizer(WORLD, num_samples=200, vocab_size=128)


@pytest.fixture(scope="module")
def tokenizer(proto):
    return TIPSv2Tokenizer(proto=proto, sequence_length=96)


def source(tokenizer, **kwargs):
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("num_batches", 6)
    kwargs.setdefault("num_samples", 10)
    return ShapesWorldBatches(WORLD, tokenizer, **kwargs)


def text_of(tokenizer, tokens, row):
    return tokenizer.detokenize({k: v[row] for k, v in tokens.items()})


def test_batches_have_the_structure_of_the_tf_data_pipeline(tokenizer):
    batch = source(tokenizer, image_size=16, num_local_crops=2, local_crop_size=8)[0]
    reference = make_pretraining_dataset(
        shapes_examples(WORLD, num_samples=8), tokenizer, batch_size=4,
        image_size=16, num_local_crops=2, local_crop_size=8,
    )  # fmt: skip
    expected = next(iter(reference))
    assert sorted(batch) == sorted(expected)
    for key in ("images", "local_crops"):
        assert batch[key].shape == tuple(expected[key].shape)
        assert batch[key].dtype == np.float32
        assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
    for key in ("alt_text", "caption"):
        for field in ("token_ids", "padding_mask"):
            assert batch[key][field].shape == tuple(expected[key][field].shape)
            assert batch[key][field].dtype == np.int32


def test_tokens_are_the_tipsv2_tokenizer_on_each_example_captions(tokenizer):
    data = source(tokenizer)
    batch = data[3]
    for row, index in enumerate(data.sample_indices(3)):
        sample = WORLD.sample(int(index))
        assert text_of(tokenizer, batch["alt_text"], row) == ascii_lower(sample["alt_text"])
        caption = text_of(tokenizer, batch["caption"], row)
        assert caption in (sample["caption_short"], sample["caption_long"])


def test_multi_mode_draws_both_caption_fields_and_alt_text_only_repeats_the_alt_text(tokenizer):
    data = source(tokenizer, num_batches=10)
    longs = 0
    for step in range(10):
        batch = data[step]
        for row, index in enumerate(data.sample_indices(step)):
            longs += text_of(tokenizer, batch["caption"], row) == WORLD.sample(int(index))["caption_long"]
    assert 8 < longs < 32  # of 40 draws, each long with probability 1/2
    batch = source(tokenizer, caption_mode="alt_text_only")[0]
    for field in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(batch["caption"][field], batch["alt_text"][field])


def test_a_batch_is_a_pure_function_of_its_global_step(tokenizer):
    data = source(tokenizer, seed=5)
    again = source(tokenizer, seed=5).steps(first_step=2, num_batches=3)
    assert len(again) == 3
    for i in range(3):
        np.testing.assert_array_equal(again[i]["images"], data[2 + i]["images"])
        np.testing.assert_array_equal(
            again[i]["caption"]["token_ids"], data[2 + i]["caption"]["token_ids"]
        )
    other = source(tokenizer, seed=6)[2]
    assert not np.array_equal(other["images"], data[2]["images"])


def test_every_pass_visits_each_pool_sample_once_in_a_new_order(tokenizer):
    data = source(tokenizer, batch_size=5, num_samples=10)
    first_pass = np.concatenate([data.sample_indices(0), data.sample_indices(1)])
    second_pass = np.concatenate([data.sample_indices(2), data.sample_indices(3)])
    assert sorted(first_pass) == list(range(10)) == sorted(second_pass)
    assert not np.array_equal(first_pass, second_pass)


def test_full_scale_crop_at_the_world_size_returns_the_image(tokenizer):
    data = source(tokenizer, crop_scale=(1.0, 1.0), caption_mode="alt_text_only")
    batch = data[0]
    for row, index in enumerate(data.sample_indices(0)):
        expected = WORLD.sample(int(index))["image"].astype(np.float32) / 255.0
        # A ratio other than 1 cannot fit at full area: the whole image.
        np.testing.assert_allclose(batch["images"][row], expected, atol=1e-6)


def test_crop_boxes_stay_inside_the_image_and_within_the_area_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_crop_box(rng, 40, 30, (0.2, 0.6))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 30
        assert h * w == 1200 or 0.15 <= h * w / 1200 <= 0.7


def test_index_past_the_end_and_bad_arguments_are_errors(tokenizer):
    with pytest.raises(IndexError):
        source(tokenizer, num_batches=2)[2]
    with pytest.raises(ValueError, match="caption_mode"):
        source(tokenizer, caption_mode="long")
    with pytest.raises(ValueError, match="batch_size"):
        source(tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="ShapesWorld"):
        ShapesWorldBatches("world", tokenizer, 4, 1)


def test_works_where_tensorflow_is_not_installed(tmp_path, proto):
    # An accelerator image may have JAX or torch but no TensorFlow.
    path = tmp_path / "spm.model"
    path.write_bytes(proto)
    # Keras' own TensorFlow backend needs TensorFlow: such a machine runs another.
    backend = "jax" if keras.backend.backend() == "tensorflow" else keras.backend.backend()
    script = f"""
import sys
for name in ("tensorflow", "tensorflow_text"):
    sys.modules[name] = None  # import fails, find_spec says "not installed"
from keras_tipsv2.shapes import ShapesWorld, ShapesWorldBatches
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
tokenizer = TIPSv2Tokenizer(proto={str(path)!r}, sequence_length=96)
batch = ShapesWorldBatches(ShapesWorld(image_size=16), tokenizer, 2, 1, num_samples=4)[0]
print(batch["images"].shape, batch["alt_text"]["token_ids"].shape)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=backend),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(2, 16, 16, 3) (2, 96)" in done.stdout
