import io
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_tipsv2.data import augment
from keras_tipsv2.data.captions import caption_pair
from keras_tipsv2.data.captions import has_captions
from keras_tipsv2.data.captions import sample_caption
from keras_tipsv2.data.coco import coco_examples
from keras_tipsv2.data.manifest import manifest_examples
from keras_tipsv2.data.pipeline import DataSourceError
from keras_tipsv2.data.pipeline import SkipCounter
from keras_tipsv2.data.pipeline import make_pretraining_dataset
from keras_tipsv2.data.pipeline import raw_examples
from keras_tipsv2.shapes.examples import shapes_examples
from keras_tipsv2.shapes.world import ShapesWorld
from keras_tipsv2.shapes.world import write_manifest
from keras_tipsv2.data.tfrecord import tfrecord_examples
from keras_tipsv2.data.tfrecord import write_tfrecords
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
from tests.spm_utils import train_tiny_spm

SEQUENCE_LENGTH = 12


def word_hash_tokenizer(texts):
    """A tf-only stand-in for TIPSv2Tokenizer: one hashed id per word."""
    words = tf.strings.split(tf.strings.lower(texts))
    words = words.to_tensor(default_value="", shape=[None, SEQUENCE_LENGTH])
    mask = tf.cast(words != "", tf.int32)
    ids = tf.cast(tf.strings.to_hash_bucket_fast(words, 1000) + 1, tf.int32)
    return {"token_ids": ids * mask, "padding_mask": mask}


def encode(image, format="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format)
    return buffer.getvalue()


def random_image(rng, size=20):
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_jsonl(path, records):
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def batches(dataset):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset]


def pipeline(source, **kwargs):
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("image_size", 16)
    return make_pretraining_dataset(source, word_hash_tokenizer, **kwargs)


@pytest.fixture
def shapes_manifest(tmp_path):
    world = ShapesWorld(image_size=32)
    return world, write_manifest(world, str(tmp_path), num_samples=4)


def test_manifest_round_trip_gives_back_images_and_captions(shapes_manifest):
    world, path = shapes_manifest
    examples = list(manifest_examples(path))
    assert len(examples) == 4
    sample = world.sample(3)
    image = augment.load_image(examples[3]).numpy()
    np.testing.assert_array_equal(image, sample["image"])
    assert examples[3]["alt_text"].numpy().decode() == sample["alt_text"]
    captions = [c.decode() for c in examples[3]["captions"].numpy()]
    assert captions == [sample["caption_short"], sample["caption_long"]]


def test_csv_manifest_resolves_paths_against_its_folder(tmp_path, rng):
    os.makedirs(tmp_path / "pics")
    (tmp_path / "pics" / "a.png").write_bytes(encode(random_image(rng)))
    (tmp_path / "m.csv").write_text("path,alt,long\npics/a.png,cat photo,a cat\n")
    (example,) = manifest_examples(
        str(tmp_path / "m.csv"), image_key="path", alt_text_key="alt",
        caption_keys=("long",),
    )  # fmt: skip
    assert example["image_path"].numpy().decode() == str(tmp_path / "pics" / "a.png")
    assert example["captions"].numpy().tolist() == [b"a cat"]


def test_invalid_jsonl_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"image": "a.png"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        manifest_examples(str(tmp_path / "m.jsonl"))


def test_coco_captions_become_the_caption_pool(tmp_path, rng):
    annotations = {
        "images": [{"id": 7, "file_name": "7.png"}, {"id": 9, "file_name": "9.png"}],
        "annotations": [
            {"image_id": 7, "caption": f"seven {k}"} for k in range(5)
        ] + [{"image_id": 9, "caption": "nine 0"}, {"image_id": 9, "caption": "nine 1"}],
    }  # fmt: skip
    (tmp_path / "captions.json").write_text(json.dumps(annotations))
    first, second = coco_examples(str(tmp_path / "captions.json"), str(tmp_path))
    assert first["captions"].numpy().tolist() == [f"seven {k}".encode() for k in range(5)]
    assert first["alt_text"].numpy() == b"seven 0"
    assert second["captions"].numpy().tolist() == [b"nine 0", b"nine 1", b"", b"", b""]
    assert second["image_path"].numpy().decode() == str(tmp_path / "9.png")


def test_tfrecord_round_trip_keeps_image_bytes_and_captions(shapes_manifest, tmp_path):
    world, path = shapes_manifest
    paths = write_tfrecords(manifest_examples(path), str(tmp_path / "shards"), 2)
    assert len(paths) == 2
    examples = list(tfrecord_examples(str(tmp_path / "shards" / "*.tfrecord")))
    # Shards are read in order: shard 0 holds examples 0 and 2.
    assert len(examples) == 4
    sample = world.sample(2)
    with open(os.path.join(os.path.dirname(path), "images/train/000002.png"), "rb") as f:
        assert examples[1]["image_bytes"].numpy() == f.read()
    assert examples[1]["alt_text"].numpy().decode() == sample["alt_text"]
    assert examples[1]["captions"].numpy()[1].decode() == sample["caption_long"]


def test_tfrecord_pattern_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="No TFRecord files match"):
        tfrecord_examples(str(tmp_path / "*.tfrecord"))


def test_corrupt_image_and_missing_caption_are_skipped_and_counted(
    tmp_path, rng, caplog
):
    good = encode(random_image(rng), "JPEG")
    for name, data in [("a.jpg", good), ("b.jpg", good), ("bad.jpg", good[: len(good) // 2])]:
        (tmp_path / name).write_bytes(data)
    write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"image": "a.jpg", "alt_text": "a", "caption_short": "x", "caption_long": "y"},
            {"image": "bad.jpg", "alt_text": "b", "caption_short": "x", "caption_long": "y"},
            {"image": "b.jpg", "alt_text": "", "caption_short": "x", "caption_long": "y"},
            {"image": "b.jpg", "alt_text": "c", "caption_short": "", "caption_long": "z"},
        ],
    )  # fmt: skip
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="keras_tipsv2.data"):
        (batch,) = batches(
            pipeline(str(tmp_path / "m.jsonl"), shuffle=False, drop_remainder=False,
                     skip_counter=counter)
        )  # fmt: skip
    assert batch["images"].shape[0] == 2
    assert counter.corrupt_images == 1 and counter.missing_captions == 1
    assert "bad.jpg: unreadable or corrupt image" in caplog.text
    assert "missing caption" in caplog.text


def test_missing_image_file_is_counted_as_unreadable(tmp_path, rng):
    (tmp_path / "a.png").write_bytes(encode(random_image(rng)))
    write_jsonl(
        tmp_path / "m.jsonl",
        [{"image": "a.png", "alt_text": "a", "caption_short": "x"},
         {"image": "gone.png", "alt_text": "b", "caption_short": "x"}],
    )  # fmt: skip
    counter = SkipCounter()
    (batch,) = batches(
        pipeline(str(tmp_path / "m.jsonl"), shuffle=False, drop_remainder=False,
                 skip_counter=counter)
    )  # fmt: skip
    assert batch["images"].shape[0] == 1 and counter.corrupt_images == 1


def test_batches_have_the_documented_shapes_and_dtypes():
    source = shapes_examples(ShapesWorld(image_size=24), num_samples=8)
    batch = batches(pipeline(source, num_local_crops=3, local_crop_size=8).take(1))[0]
    assert batch["images"].shape == (4, 16, 16, 3)
    assert batch["images"].dtype == np.float32
    assert 0.0 <= batch["images"].min() and batch["images"].max() <= 1.0
    assert batch["local_crops"].shape == (4, 3, 8, 8, 3)
    for key in ("alt_text", "caption"):
        assert batch[key]["token_ids"].shape == (4, SEQUENCE_LENGTH)
        assert batch[key]["token_ids"].dtype == np.int32
        assert batch[key]["padding_mask"].dtype == np.int32


def test_pipeline_tokenizes_alt_text_with_the_tipsv2_tokenizer(tmp_path):
    tokenizer = TIPSv2Tokenizer(proto=train_tiny_spm(str(tmp_path)), sequence_length=10)
    world = ShapesWorld(image_size=16)
    source = shapes_examples(world, num_samples=2)
    (batch,) = batches(make_pretraining_dataset(source, tokenizer, 2, 16, shuffle=False))
    expected = tokenizer(tf.constant([world.sample(i)["alt_text"] for i in (0, 1)]))
    assert batch["alt_text"]["token_ids"].dtype == np.int32
    np.testing.assert_array_equal(batch["alt_text"]["token_ids"], expected["token_ids"])
    np.testing.assert_array_equal(
        batch["alt_text"]["padding_mask"], expected["padding_mask"]
    )


def test_no_local_crops_key_without_local_crops():
    source = shapes_examples(ShapesWorld(image_size=16), num_samples=4)
    (batch,) = batches(pipeline(source))
    assert "local_crops" not in batch


def test_same_seed_gives_identical_batches_and_another_seed_differs():
    source = shapes_examples(ShapesWorld(image_size=24), num_samples=8)
    first = batches(pipeline(source, seed=5))
    again = batches(pipeline(source, seed=5))
    other = batches(pipeline(source, seed=6))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["caption"]["token_ids"], b["caption"]["token_ids"])
    assert not np.array_equal(first[0]["images"], other[0]["images"])


def test_alt_text_only_mode_gives_cls2_the_alt_text():
    source = shapes_examples(ShapesWorld(image_size=16), num_samples=8)
    for batch in batches(pipeline(source, caption_mode="alt_text_only")):
        np.testing.assert_array_equal(
            batch["caption"]["token_ids"], batch["alt_text"]["token_ids"]
        )


def test_multi_mode_draws_both_caption_fields_about_equally():
    example = {"alt_text": tf.constant("alt"), "captions": tf.constant(["short", "long"])}
    drawn = [
        caption_pair(example, tf.constant([s, 1]), "multi")[1].numpy()
        for s in range(100)
    ]
    assert 30 < drawn.count(b"short") < 70
    assert drawn.count(b"short") + drawn.count(b"long") == 100


def test_sample_caption_never_draws_an_empty_field():
    captions = tf.constant(["", "only", "  "])
    for s in range(20):
        assert sample_caption(captions, tf.constant([s, 0])).numpy() == b"only"


def test_alt_text_only_mode_needs_no_rich_caption():
    example = {"alt_text": tf.constant("alt"), "captions": tf.constant(["", ""])}
    assert not has_captions(example, "multi").numpy()
    assert has_captions(example, "alt_text_only").numpy()


def test_unknown_caption_mode_is_rejected():
    with pytest.raises(ValueError, match="Unknown caption_mode 'gemini'"):
        pipeline(shapes_examples(ShapesWorld(image_size=16), 4), caption_mode="gemini")


def test_coco_json_path_as_source_points_to_coco_examples():
    with pytest.raises(ValueError, match="coco_examples"):
        raw_examples("captions_train2017.json")


def test_in_memory_shapes_source_matches_the_world():
    world = ShapesWorld(image_size=16, split="validation")
    finite = list(shapes_examples(world, num_samples=2, start=5))
    streamed = list(shapes_examples(world, start=5).take(2))
    for example, index in zip(finite, (5, 6)):
        np.testing.assert_array_equal(example["image"], world.sample(index)["image"])
    np.testing.assert_array_equal(streamed[1]["image"], finite[1]["image"])
    assert streamed[1]["captions"].numpy()[0].decode() == world.sample(6)["caption_short"]


def test_full_scale_crop_of_same_size_keeps_the_image(rng):
    image = random_image(rng, 16)
    view = augment.random_resized_crop(image, 16, tf.constant([1, 2]), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(view.numpy(), image / 255.0, atol=1e-5)


def test_random_resized_crop_zooms_in_within_the_scale_range(rng):
    # A left-to-right ramp: a crop of area a spans at most ~sqrt(a * 4/3) of it.
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32)[None, :, None], (64, 1, 3))
    for s in range(5):
        view = augment.random_resized_crop(
            ramp.astype(np.uint8), 32, tf.constant([s, 0]), scale=(0.05, 0.1)
        ).numpy()
        span = view[:, -1, 0].mean() - view[:, 0, 0].mean()
        assert 0.1 < span < 0.4


def test_colour_jitter_with_probability_zero_is_identity(rng):
    image = random_image(rng) / 255.0
    out = augment.colour_jitter(tf.constant(image, tf.float32), tf.constant([0, 1]), probability=0.0)
    np.testing.assert_allclose(out.numpy(), image, atol=1e-6)


def test_local_crops_have_count_and_size(rng):
    crops = augment.local_crops(random_image(rng, 40), 4, 12, tf.constant([3, 4]))
    assert crops.shape == (4, 12, 12, 3)
    assert not np.allclose(crops[0], crops[1])


def unreadable_manifest(tmp_path, bad, good=0, rng=None):
    """A manifest of `bad` unreadable images followed by `good` readable ones."""
    records = []
    for i in range(bad):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"not an image")
        records.append({"image": f"bad{i}.jpg", "alt_text": "a", "caption_short": "x"})
    for i in range(good):
        (tmp_path / f"good{i}.png").write_bytes(encode(random_image(rng)))
        records.append({"image": f"good{i}.png", "alt_text": "a", "caption_short": "x"})
    write_jsonl(tmp_path / "m.jsonl", records)
    return str(tmp_path / "m.jsonl")


def test_a_source_whose_every_record_is_dropped_stops_naming_it_and_the_reasons(tmp_path):
    manifest = unreadable_manifest(tmp_path, bad=5)
    counter = SkipCounter()
    # repeat=True: without the stop, this would loop forever without a batch.
    dataset = pipeline(manifest, repeat=True, skip_counter=counter)
    with pytest.raises(tf.errors.OpError, match="every one of its records was dropped"):
        next(iter(dataset))
    assert isinstance(counter.error, DataSourceError)
    message = str(counter.error)
    assert message.startswith(f"Stopped reading {manifest}: every one of its records was dropped")
    assert "bad" in message and "unreadable or corrupt image" in message
    assert counter.corrupt_images >= 5


def test_a_long_run_of_drops_stops_the_pipeline(tmp_path, rng):
    manifest = unreadable_manifest(tmp_path, bad=4, good=1, rng=rng)
    counter = SkipCounter(max_consecutive_skips=3)
    with pytest.raises(tf.errors.OpError, match="3 examples in a row were dropped"):
        batches(pipeline(manifest, shuffle=False, drop_remainder=False, skip_counter=counter))
    assert counter.corrupt_images >= 3  # read ahead may count one more


def test_only_the_first_drops_are_logged_but_all_are_counted(tmp_path, rng, caplog):
    manifest = unreadable_manifest(tmp_path, bad=4, good=1, rng=rng)
    counter = SkipCounter(logged_skips=2)
    with caplog.at_level(logging.WARNING, logger="keras_tipsv2.data"):
        (batch,) = batches(pipeline(manifest, shuffle=False, drop_remainder=False, skip_counter=counter))
    assert batch["images"].shape[0] == 1
    assert caplog.text.count("Skipped example") == 2
    assert "counted, not logged" in caplog.text
    totals = counter.totals()
    assert totals["corrupt_images"] == 4 and totals["total"] == 4
    assert totals["first_reasons"] == [
        f"#{i} {tmp_path / f'bad{i}.jpg'}: unreadable or corrupt image" for i in range(2)
    ]
