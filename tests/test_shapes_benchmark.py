import json
import re

import numpy as np
import pytest
from keras import ops
from PIL import Image

from keras_tipsv2.shapes.world import VOCABULARIES
from keras_tipsv2.shapes.world import ShapesWorld
from keras_tipsv2.shapes.world import class_names
from keras_tipsv2.shapes.world import object_class
from keras_tipsv2.shapes.tokenizer import train_shapes_tokenizer
from keras_tipsv2.evaluation.miou import SegmentationScore
from keras_tipsv2.shapes.benchmark import caption_relevance
from keras_tipsv2.shapes.benchmark import classification_chance
from keras_tipsv2.shapes.benchmark import evaluate_on_shapes
from keras_tipsv2.shapes.benchmark import markdown_comparison
from keras_tipsv2.shapes.benchmark import markdown_report
from keras_tipsv2.shapes.benchmark import patch_majority_labels
from keras_tipsv2.shapes.benchmark import patch_oracle_labels
from keras_tipsv2.shapes.benchmark import present_class_hits
from keras_tipsv2.shapes.benchmark import save_pictures
from keras_tipsv2.shapes.benchmark import top1_hits
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
from tests.conftest import tiny_backbone_kwargs

PATCH = 14
SIZE = 56  # 4 x 4 patches
NUM_IMAGES = 6
# Two short templates keep the prompt count (and the test) small.
TEMPLATES = ("a photo of a {}.", "itap of the {}.")


def held_out_world():
    # Large objects so that most patches have a clear majority.
    return ShapesWorld(image_size=SIZE, radius_range=(0.25, 0.45), split="validation")


@pytest.fixture(scope="module")
def proto():
    world = ShapesWorld(image_size=SIZE, split="train")
    return train_shapes_tokenizer(world, num_samples=150, vocab_size=128)


@pytest.fixture(scope="module")
def tokenizer(proto):
    return TIPSv2Tokenizer(proto=proto, sequence_length=16)


@pytest.fixture(scope="module")
def tiny_backbone(tokenizer):
    return TIPSv2Backbone(
        **tiny_backbone_kwargs(text_vocabulary_size=tokenizer.vocabulary_size())
    )


@pytest.fixture(scope="module")
def tiny_results(tiny_backbone, tokenizer):
    return evaluate_on_shapes(
        tiny_backbone, tokenizer, held_out_world(), num_images=NUM_IMAGES,
        templates=TEMPLATES,
    )


# --- The ShapesWorld tokenizer ----------------------------------------------


def test_tokenizer_round_trips_held_out_captions_without_unknown_pieces(proto):
    # Long enough for the longest long caption at 128 pieces (66 seen).
    tokenizer = TIPSv2Tokenizer(proto=proto, sequence_length=96)
    world = held_out_world()
    captions = [
        world.sample(i)[field]
        for i in range(20)
        for field in ("alt_text", "caption_short", "caption_long")
    ]
    tokens = tokenizer(captions)
    ids = np.asarray(tokens["token_ids"])[np.asarray(tokens["padding_mask"]) == 1]
    assert not np.any(ids == 1)  # unk
    assert list(tokenizer.detokenize(tokens)) == captions


def test_tokenizer_follows_tips_special_ids_and_lowercases(proto):
    tokenizer = TIPSv2Tokenizer(proto=proto, sequence_length=8)
    assert tokenizer.id_to_token(0) == "<pad>"
    assert tokenizer.id_to_token(1) == "<unk>"
    upper, lower = tokenizer(["A RED Star", "a red star"])["token_ids"]
    np.testing.assert_array_equal(upper, lower)
    # No BOS/EOS: "a red star" is three whole-word pieces, then padding.
    assert np.asarray(lower).tolist() == [
        tokenizer.token_to_id(p) for p in ("▁a", "▁red", "▁star")
    ] + [0] * 5


def test_tokenizer_training_is_deterministic(proto):
    world = ShapesWorld(image_size=SIZE, split="train")
    assert train_shapes_tokenizer(world, num_samples=150, vocab_size=128) == proto


def test_tokenizer_rejects_a_vocabulary_too_small_for_the_characters():
    with pytest.raises(ValueError, match="vocab_size must be at least 48"):
        train_shapes_tokenizer(held_out_world(), num_samples=1, vocab_size=40)


# --- Floor and ceiling, by hand ---------------------------------------------

# 4 x 4 labels in 2 x 2 patches of 2 px; the patch majorities are 0, 1 / 2, 0.
HAND_LABELS = np.array(
    [[0, 0, 1, 1],
     [0, 1, 1, 1],
     [2, 2, 0, 0],
     [2, 0, 0, 0]]
)  # fmt: skip


def miou_of(predicted, labels, num_classes=3):
    score = SegmentationScore(num_classes)
    score.update(predicted, labels)
    return score.mean_iou()


def test_patch_majority_labels_by_hand():
    np.testing.assert_array_equal(
        patch_majority_labels(HAND_LABELS, (2, 2), 3), [[0, 1], [2, 0]]
    )


def test_patch_majority_ties_go_to_the_lower_class():
    labels = np.array([[2, 1], [1, 2]])
    assert patch_majority_labels(labels, (1, 1), 3).tolist() == [[1]]


def test_patch_majority_weights_pixels_by_area_on_uneven_grids():
    # 3 px into 2 cells of 1.5 px: the middle pixel counts half in each.
    labels = np.array([[1, 0, 2]] * 3)
    assert patch_majority_labels(labels, (1, 2), 3).tolist() == [[1, 2]]
    labels = np.array([[1, 0, 0]] * 3)
    assert patch_majority_labels(labels, (1, 2), 3).tolist() == [[1, 0]]


def test_patch_oracle_miou_by_hand():
    oracle = patch_oracle_labels(HAND_LABELS, (2, 2), 3)
    # A 2x upsample puts every pixel nearest to its own patch.
    np.testing.assert_array_equal(
        oracle, [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]
    )
    # IoU: class 0 7/9, class 1 4/5, class 2 3/4.
    assert miou_of(oracle, HAND_LABELS) == pytest.approx((7 / 9 + 4 / 5 + 3 / 4) / 3)


def test_all_background_miou_by_hand():
    # Background IoU 8/16, classes 1 and 2 score 0.
    assert miou_of(np.zeros_like(HAND_LABELS), HAND_LABELS) == pytest.approx(1 / 6)


# --- Classification and retrieval rules -------------------------------------


def test_top1_hits_count_ties_with_an_irrelevant_column_as_misses():
    similarities = np.array([[0.2, 0.9, 0.1], [0.5, 0.5, 0.1], [0.3, 0.3, 0.3]])
    relevant = np.array([[0, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    assert top1_hits(similarities, relevant).tolist() == [True, False, True]


def fake_sample(*objects):
    return {
        "objects": [
            {"colour": c, "shape": s, "colour_index": ci, "shape_index": si}
            for c, s, ci, si in objects
        ],
        "caption_short": " and ".join(f"a {c} {s}" for c, s, _, _ in objects),
    }


RED_CIRCLE = ("red", "circle", 0, 0)
BLUE_STAR = ("blue", "star", 2, 3)


def test_classification_is_right_when_the_top_class_is_any_object_shown():
    samples = [fake_sample(RED_CIRCLE, BLUE_STAR), fake_sample(RED_CIRCLE)]
    similarities = np.zeros((2, 5))
    similarities[:, 2] = 1.0  # both images predict "blue"
    assert present_class_hits(similarities, samples, "colour").tolist() == [True, False]
    # Chance: 2 of 5 colours shown, then 1 of 5.
    assert classification_chance(samples, "colour") == pytest.approx(0.3)


def test_caption_relevance_treats_identical_object_sets_as_one_text():
    samples = [
        fake_sample(RED_CIRCLE, BLUE_STAR),
        fake_sample(RED_CIRCLE),
        fake_sample(BLUE_STAR, RED_CIRCLE),  # the first one's objects, reordered
    ]
    texts, relevant = caption_relevance(samples)
    assert texts == ["a red circle and a blue star", "a red circle"]
    assert relevant.tolist() == [[True, False], [False, True], [True, False]]


# --- The whole benchmark on an untrained backbone ---------------------------


def test_results_cover_every_vocabulary_and_serialise_to_json(tiny_results):
    assert set(tiny_results["segmentation"]) == set(VOCABULARIES)
    assert set(tiny_results["classification"]) == set(VOCABULARIES)
    assert set(tiny_results["retrieval"]) == {"num_texts", "cls_1", "cls_2"}
    assert json.loads(json.dumps(tiny_results)) == tiny_results


def test_all_background_miou_is_background_share_over_classes_present(tiny_results):
    world = held_out_world()
    for vocabulary in VOCABULARIES:
        labels = np.stack([world.sample(i)["labels"][vocabulary] for i in range(NUM_IMAGES)])
        share = np.mean(labels == 0)
        present = len(np.unique(labels))  # background included
        assert tiny_results["segmentation"][vocabulary]["background"] == pytest.approx(
            share / present
        )


def test_oracle_is_far_above_the_floor_and_below_one(tiny_results):
    for row in tiny_results["segmentation"].values():
        assert 2 * row["background"] < row["oracle"] < 1.0


def test_markdown_report_renders_every_number(tiny_results):
    report = markdown_report(tiny_results, title="Tiny")
    assert report.startswith("## Tiny\n")
    row = tiny_results["segmentation"]["colour_shape"]
    expected = "| colour_shape | 26 | {:.1f} | {:.1f} | {:.1f} | {:.1f} |".format(
        *(100 * row[k] for k in ("values", "values_no_residual", "background", "oracle"))
    )
    assert expected in report
    recall = tiny_results["retrieval"]["cls_2"]["text_to_image@1"]
    assert re.search(rf"\| text → image \| [\d.]+ \| {100 * recall:.1f} \|", report)
    assert report.count("\n| ") == 3 + 3 + 2 + 3  # headers + rows of the 3 tables


def shifted(results, amount):
    """A copy of `results` with every segmentation value raised by `amount`."""
    copy = json.loads(json.dumps(results))
    for row in copy["segmentation"].values():
        row["values"] += amount
        row["values_no_residual"] += amount
    return copy


def test_comparison_lines_up_two_models_and_the_first_ones_lead(tiny_results):
    student = shifted(tiny_results, 0.125)
    table = markdown_comparison({"student": student, "teacher": tiny_results}, title="S vs T")
    assert table.startswith("## S vs T\n")
    assert "| | student | teacher | student − teacher |" in table
    row = tiny_results["segmentation"]["shape"]
    expected = "| mIoU shape, values (TIPS) | {:.1f} | {:.1f} | +12.5 |".format(
        100 * (row["values"] + 0.125), 100 * row["values"]
    )
    assert expected in table
    recall = tiny_results["retrieval"]["cls_1"]["text_to_image@1"]
    assert f"| R@1 text → image, CLS_1 | {100 * recall:.1f} | {100 * recall:.1f} | +0.0 |" in table
    # 3 vocabularies x (2 mIoU + 2 classification) + 4 recalls, after the header.
    assert table.count("\n| ") == 1 + 3 * 4 + 4


def test_comparison_refuses_models_scored_on_other_images(tiny_results):
    other = dict(tiny_results, num_images=tiny_results["num_images"] + 1)
    with pytest.raises(ValueError, match="other images"):
        markdown_comparison({"a": tiny_results, "b": other})
    with pytest.raises(ValueError, match="at least two"):
        markdown_comparison({"a": tiny_results})


def test_unknown_vocabulary_is_rejected(tiny_backbone, tokenizer):
    with pytest.raises(ValueError, match="vocabularies must be"):
        evaluate_on_shapes(
            tiny_backbone, tokenizer, held_out_world(), num_images=1,
            vocabularies=("texture",),
        )


# --- An ideal backbone reaches the oracle -----------------------------------


class IdealBackbone:
    """A stand-in whose patches and text agree perfectly on one vocabulary.

    Text: a prompt is embedded as the one-hot code of every class name of
    the vocabulary it contains (read back through the tokenizer). Images:
    it recognises the held-out images it was built from, and each patch
    token is the one-hot code of that patch's majority class; both CLS
    tokens are the codes of the objects shown, summed. Cosine scores are
    then exactly one-hot, so zero-shot segmentation must give the oracle.
    """

    vision_patch_size = PATCH
    vision_num_cls_tokens = 2

    def __init__(self, world, vocabulary, tokenizer, num_images):
        self.names = class_names(vocabulary)
        self.tokenizer = tokenizer
        codes = np.eye(len(self.names), dtype="float32")
        grid = (SIZE // PATCH,) * 2
        self.answers = {}
        for index in range(num_images):
            sample = world.sample(index)
            patches = patch_majority_labels(
                sample["labels"][vocabulary], grid, len(self.names)
            )
            shown = sum(
                codes[object_class(vocabulary, o["colour_index"], o["shape_index"])]
                for o in sample["objects"]
            )
            self.answers[sample["image"].tobytes()] = (codes[patches], np.stack([shown] * 2))

    def encode_images(self, images, values_trick=None):
        images = np.rint(ops.convert_to_numpy(images) * 255).astype("uint8")
        patch_tokens, cls_tokens = zip(*(self.answers[im.tobytes()] for im in images))
        return {"patch_tokens": np.stack(patch_tokens), "cls_tokens": np.stack(cls_tokens)}

    def encode_text(self, token_ids, padding_mask):
        rows = []
        for ids, mask in zip(ops.convert_to_numpy(token_ids), ops.convert_to_numpy(padding_mask)):
            pieces = [self.tokenizer.id_to_token(int(i)) for i in ids[mask == 1]]
            words = " " + re.sub("[^a-z]+", " ", "".join(pieces).replace("▁", " ")) + " "
            rows.append([float(f" {name} " in words) for name in self.names])
        return np.array(rows, "float32")


@pytest.fixture(scope="module")
def ideal_results(tokenizer):
    cache = {}

    def results(vocabulary):
        if vocabulary not in cache:
            world = held_out_world()
            backbone = IdealBackbone(world, vocabulary, tokenizer, NUM_IMAGES)
            cache[vocabulary] = evaluate_on_shapes(
                backbone, tokenizer, world, num_images=NUM_IMAGES,
                templates=TEMPLATES, vocabularies=(vocabulary,),
            )
        return cache[vocabulary]

    return results


@pytest.mark.parametrize("vocabulary", VOCABULARIES)
def test_ideal_backbone_segmentation_equals_the_oracle(ideal_results, vocabulary):
    row = ideal_results(vocabulary)["segmentation"][vocabulary]
    assert row["values"] == row["oracle"]
    assert row["values_no_residual"] == row["oracle"]
    assert row["oracle"] > 2 * row["background"]


def test_ideal_backbone_classifies_and_retrieves_perfectly(ideal_results):
    results = ideal_results("colour_shape")
    classification = results["classification"]["colour_shape"]
    assert (classification["cls_1"], classification["cls_2"]) == (1.0, 1.0)
    assert classification["chance"] < 0.15
    for name in ("cls_1", "cls_2"):
        assert results["retrieval"][name] == {"image_to_text@1": 1.0, "text_to_image@1": 1.0}


# --- Pictures ----------------------------------------------------------------


def test_save_pictures_writes_a_pca_picture_and_an_overlay(tiny_backbone, tokenizer, tmp_path):
    paths = save_pictures(
        tiny_backbone, tokenizer, held_out_world(), str(tmp_path), templates=TEMPLATES
    )
    pca = Image.open(paths["pca"])
    segmentation = Image.open(paths["segmentation"])
    # 56 px enlarged 4x: image and PCA map side by side with a 4 px gap
    # (also enlarged); overlay rows of 224 px under 16 px titles, 4 px apart.
    assert pca.size == (4 * (2 * SIZE + 4), 4 * SIZE)
    assert segmentation.height == 2 * (16 + 224) + 4
    # The PCA half is not blank.
    pca_half = np.asarray(pca)[:, -4 * SIZE :]
    assert pca_half.reshape(-1, 3).std(axis=0).max() > 10
