import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from keras_tipsv2.shapes.world import COLOURS
from keras_tipsv2.shapes.world import PALETTE
from keras_tipsv2.shapes.world import SHAPES
from keras_tipsv2.shapes.world import SPLIT_SIZE
from keras_tipsv2.shapes.world import ShapesWorld
from keras_tipsv2.shapes.world import class_names
from keras_tipsv2.shapes.world import relation_phrase
from keras_tipsv2.shapes.world import write_ade_layout
from keras_tipsv2.shapes.world import write_manifest
from keras_tipsv2.evaluation.datasets import ade20k

PAIR = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")


def small_world(**kwargs):
    kwargs.setdefault("image_size", 48)
    return ShapesWorld(**kwargs)


def object_names(sample):
    return {f"{o['colour']} {o['shape']}" for o in sample["objects"]}


def test_same_seed_and_index_give_a_bit_identical_sample():
    a, b = small_world(seed=3).sample(7), small_world(seed=3).sample(7)
    assert a["image"].tobytes() == b["image"].tobytes()
    for vocabulary in a["labels"]:
        np.testing.assert_array_equal(a["labels"][vocabulary], b["labels"][vocabulary])
    assert [a[k] for k in ("alt_text", "caption_short", "caption_long")] == [
        b[k] for k in ("alt_text", "caption_short", "caption_long")
    ]


def test_world_seed_changes_the_samples():
    a, b = small_world(seed=0).sample(0), small_world(seed=1).sample(0)
    assert not np.array_equal(a["image"], b["image"])


def test_train_and_validation_draw_seeds_from_disjoint_ranges():
    train, held_out = small_world(split="train"), small_world(split="validation")
    last_train = train.sample_seed(SPLIT_SIZE - 1)
    first_held_out = held_out.sample_seed(0)
    assert last_train < first_held_out
    train_seeds = {train.sample_seed(i) for i in range(1000)}
    held_out_seeds = {held_out.sample_seed(i) for i in range(1000)}
    assert not train_seeds & held_out_seeds


def test_train_and_validation_images_differ_at_the_same_index():
    train, held_out = small_world(split="train"), small_world(split="validation")
    for index in range(5):
        assert not np.array_equal(
            train.sample(index)["image"], held_out.sample(index)["image"]
        )


def test_index_outside_the_split_range_is_rejected():
    with pytest.raises(ValueError, match="index must be in"):
        small_world().sample(SPLIT_SIZE)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        ShapesWorld(split="test")


def test_colour_labels_match_the_rendered_pixel_colours():
    world = small_world()
    agree, total = 0, 0
    for index in range(20):
        sample = world.sample(index)
        labels = sample["labels"]["colour"]
        pixels = sample["image"].astype(np.float32)[labels > 0]
        distance = np.linalg.norm(pixels[:, None] - PALETTE[None], axis=-1)
        agree += np.sum(distance.argmin(-1) + 1 == labels[labels > 0])
        total += pixels.shape[0]
    assert total > 0 and agree / total > 0.99


def test_background_pixels_are_unsaturated():
    world = small_world()
    for index in range(10):
        sample = world.sample(index)
        background = sample["image"][sample["labels"]["colour"] == 0].astype(int)
        spread = background.max(-1) - background.min(-1)
        # Palette colours have a channel spread above 100.
        assert np.mean(spread) < 30


def test_colour_shape_labels_combine_colour_and_shape_labels():
    sample = small_world().sample(4)
    colour, shape = sample["labels"]["colour"], sample["labels"]["shape"]
    combined = sample["labels"]["colour_shape"].astype(int)
    foreground = colour > 0
    np.testing.assert_array_equal(foreground, shape > 0)
    expected = 1 + (colour.astype(int) - 1) * len(SHAPES) + (shape.astype(int) - 1)
    np.testing.assert_array_equal(combined[foreground], expected[foreground])
    assert np.all(combined[~foreground] == 0)


def test_label_map_holds_exactly_the_objects_present():
    world = small_world()
    for index in range(20):
        sample = world.sample(index)
        names = class_names("colour_shape")
        present = {names[k] for k in np.unique(sample["labels"]["colour_shape"]) if k}
        assert present == object_names(sample)


def test_every_object_keeps_most_of_its_pixels_visible():
    world = small_world()
    for index in range(20):
        for obj in world.sample(index)["objects"]:
            # A disc of the smallest radius has about 3.1 r^2 pixels; shapes
            # cover at least 40 % of their disc and keep 60 % visible.
            smallest = 0.4 * 0.6 * np.pi * obj["radius"] ** 2
            assert obj["visible_pixels"] > 0.5 * smallest


def test_object_sizes_and_counts_follow_the_configuration():
    world = ShapesWorld(image_size=64, num_objects=(2, 3), radius_range=(0.1, 0.2))
    counts = []
    for index in range(20):
        objects = world.sample(index)["objects"]
        counts.append(len(objects))
        for obj in objects:
            assert 6.4 <= obj["radius"] <= 12.8
    assert set(counts) == {2, 3}


def test_short_and_long_captions_name_exactly_the_objects_present():
    world = small_world()
    for index in range(30):
        sample = world.sample(index)
        for field in ("caption_short", "caption_long"):
            named = {" ".join(m) for m in PAIR.findall(sample[field])}
            assert named == object_names(sample), (field, sample[field])


def test_alt_text_keywords_belong_to_objects_present():
    world = small_world()
    for index in range(30):
        sample = world.sample(index)
        words = set(re.findall(r"[a-z0-9]+", sample["alt_text"]))
        keywords = words & set(COLOURS + SHAPES)
        present = {w for o in sample["objects"] for w in (o["colour"], o["shape"])}
        assert keywords and keywords <= present


def test_relation_phrase_follows_the_dominant_axis():
    a = {"centre": (10.0, 50.0)}
    b = {"centre": (40.0, 45.0)}
    assert relation_phrase(a, b) == "left of"
    assert relation_phrase(b, a) == "right of"
    c = {"centre": (12.0, 90.0)}
    assert relation_phrase(a, c) == "above"


def test_class_names_list_background_first_for_each_vocabulary():
    assert class_names("colour") == ["background", *COLOURS]
    assert class_names("shape") == ["background", *SHAPES]
    combined = class_names("colour_shape")
    assert len(combined) == 26 and combined[1] == "red circle"
    assert combined[1 + 2 * 5 + 3] == "blue star"


def test_unknown_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="Unknown vocabulary 'size'"):
        class_names("size")


def test_ade_layout_stores_class_plus_one_and_lists_classes(tmp_path):
    world = small_world(split="validation")
    roots = write_ade_layout(world, str(tmp_path), num_samples=2, image_format="png")
    sample = world.sample(1)
    for vocabulary, root in roots.items():
        stored = np.asarray(
            Image.open(os.path.join(root, "annotations", "validation", "000001.png"))
        )
        np.testing.assert_array_equal(stored, sample["labels"][vocabulary] + 1)
        image = np.asarray(
            Image.open(os.path.join(root, "images", "validation", "000001.png"))
        )
        np.testing.assert_array_equal(image, sample["image"])
        with open(os.path.join(root, "classes.txt")) as f:
            assert f.read().splitlines() == class_names(vocabulary)


def test_evaluation_ade_reader_recovers_the_class_maps(tmp_path):
    world = small_world(split="validation")
    roots = write_ade_layout(world, str(tmp_path), num_samples=3)
    dataset = ade20k(roots["shape"])
    assert len(dataset) == 3
    for index, (image, raw) in enumerate(dataset):
        assert image.shape == (48, 48, 3)
        assert not np.isin(raw, dataset.ignore_labels).any()
        labels = raw + dataset.label_offset
        np.testing.assert_array_equal(labels, world.sample(index)["labels"]["shape"])


def test_manifest_lists_relative_image_paths_and_three_captions(tmp_path):
    world = small_world()
    path = write_manifest(world, str(tmp_path), num_samples=3)
    with open(path) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 3
    assert records[2]["image"] == "images/train/000002.png"
    assert records[2]["caption_long"] == world.sample(2)["caption_long"]
    stored = np.asarray(Image.open(os.path.join(tmp_path, records[2]["image"])))
    np.testing.assert_array_equal(stored, world.sample(2)["image"])


def alt_words(sample):
    return set(sample["alt_text"].replace(",", " ").replace("|", " ").split())


def test_describe_background_names_the_texture_and_changes_only_captions():
    from keras_tipsv2.shapes.world import NOISE_WORDS
    from keras_tipsv2.shapes.world import TEXTURE_WORDS

    plain, described = small_world(), small_world(describe_background=True)
    mentions = 0
    for index in range(20):
        a, b = plain.sample(index), described.sample(index)
        assert a["image"].tobytes() == b["image"].tobytes()
        assert a["caption_long"] == b["caption_long"]
        texture = a["caption_long"].rsplit(" ", 2)[-2]  # "... on a <word> background"
        assert texture in TEXTURE_WORDS.values()
        assert b["caption_short"] == f"{a['caption_short']} on a {texture} background"
        assert "background" not in a["caption_short"] + a["alt_text"]
        words_a, words_b = alt_words(a), alt_words(b)
        objects = set(COLOURS) | set(SHAPES)
        assert words_a & objects == words_b & objects  # the same keywords kept
        assert words_b - objects - set(NOISE_WORDS) <= {texture, "background"}
        mentions += "background" in b["alt_text"]
    assert 3 <= mentions <= 17  # each alt-text names it with probability 1/2


def test_empty_fraction_adds_background_only_images_and_leaves_the_others_untouched():
    from keras_tipsv2.shapes.world import TEXTURE_WORDS

    plain = small_world(describe_background=True)
    mixed = small_world(describe_background=True, empty_fraction=0.3)
    empty = [index for index in range(60) if mixed.is_empty(index)]
    assert 6 <= len(empty) <= 30  # each image is empty with probability 0.3
    for index in range(60):
        a, b = plain.sample(index), mixed.sample(index)
        if index not in empty:
            assert a["image"].tobytes() == b["image"].tobytes()
            assert [a[k] for k in ("alt_text", "caption_short", "caption_long")] == [
                b[k] for k in ("alt_text", "caption_short", "caption_long")
            ]
            continue
        assert b["objects"] == []
        for labels in b["labels"].values():
            assert not labels.any()  # every pixel is background
        texture = b["caption_short"].split()[2]
        assert texture in TEXTURE_WORDS.values()
        assert b["caption_short"] == f"an empty {texture} background"
        assert b["caption_long"] == f"an empty {texture} background with no shapes"
        assert not alt_words(b) & (set(COLOURS) | set(SHAPES))


def test_empty_fraction_must_leave_room_for_objects():
    with pytest.raises(ValueError, match="empty_fraction"):
        small_world(empty_fraction=1.0)
