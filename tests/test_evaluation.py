import os

import numpy as np
import pytest
from PIL import Image

from keras_tipsv2.evaluation.datasets import ADE20K_CLASSES
from keras_tipsv2.evaluation.datasets import CONTEXT59_CLASSES
from keras_tipsv2.evaluation.datasets import VOC_CLASSES
from keras_tipsv2.evaluation.datasets import load_segmentation_dataset
from keras_tipsv2.evaluation.miou import SegmentationScore
from keras_tipsv2.evaluation.miou import class_iou
from keras_tipsv2.evaluation.miou import confusion_matrix
from keras_tipsv2.evaluation.miou import mean_iou
from keras_tipsv2.evaluation.pca import pca_components
from keras_tipsv2.evaluation.pca import pca_rgb
from keras_tipsv2.evaluation.retrieval import classification_accuracy
from keras_tipsv2.evaluation.retrieval import retrieval_recall
from keras_tipsv2.evaluation.segmentation import iou_table
from keras_tipsv2.evaluation.segmentation import set_dataset_classes

# --- mIoU --------------------------------------------------------------------


def test_confusion_matrix_counts_truth_rows_and_predicted_columns():
    labels = np.array([[0, 0, 1], [1, 2, 2]])
    predictions = np.array([[0, 1, 1], [1, 2, 0]])
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(predictions, labels, 3), expected)


def test_class_iou_and_mean_iou_by_hand():
    confusion = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # class 0: 1 / (2 + 2 - 1); class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1)
    np.testing.assert_allclose(class_iou(confusion), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_ade_rule_ignores_0_and_255_and_shifts_labels_down():
    raw = np.array([0, 1, 2, 255, 3, 1])
    predictions = np.array([2, 0, 0, 1, 2, 1])  # the 0 and 255 pixels don't count
    confusion = confusion_matrix(predictions, raw, 3, ignore_labels=(0, 255), label_offset=-1)
    expected = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(confusion, expected)
    # IoU: class 0 = 1/3, class 1 = 0/2, class 2 = 1/1.
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 0 + 1) / 3)


def test_mean_iou_skips_classes_with_an_empty_union():
    confusion = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 0]])
    iou = class_iou(confusion)
    assert np.isnan(iou[2]) and iou[1] == 0.0
    assert mean_iou(confusion) == pytest.approx((3 / 4 + 0.0) / 2)


def test_segmentation_score_accumulates_over_images():
    score = SegmentationScore(2, ignore_labels=(255,))
    score.update(np.array([0, 1]), np.array([0, 0]))
    score.update(np.array([1, 1]), np.array([1, 255]))
    np.testing.assert_array_equal(score.confusion, [[1, 1], [0, 1]])
    assert score.mean_iou() == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_confusion_matrix_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), 3)


def test_confusion_matrix_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 3)


def test_iou_table_lists_each_class_in_percent():
    table = iou_table(["sky", "grass"], [0.5, float("nan")]).splitlines()
    assert table[1].split() == ["sky", "50.00"]
    assert table[2].split() == ["grass", "-"]


# --- Dataset readers -----------------------------------------------------


def test_class_lists_have_the_benchmark_sizes():
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky")
    assert ADE20K_CLASSES[-1] == "flag"
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[15] == "person"
    assert len(CONTEXT59_CLASSES) == len(set(CONTEXT59_CLASSES)) == 59


def _write_pair(image_path, annotation_path, value, palette=False):
    os.makedirs(os.path.dirname(image_path), exist_ok=True)
    os.makedirs(os.path.dirname(annotation_path), exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), 200, "uint8")).save(image_path)
    annotation = Image.fromarray(np.full((6, 8), value, "uint8"))
    if palette:
        annotation = annotation.convert("P")
        annotation.putpalette([0, 0, 0] * 256)
        annotation.putdata([value] * 48)
    annotation.save(annotation_path)


def test_ade20k_reader_pairs_sorted_images_with_annotations(tmp_path):
    for name, value in (("b", 2), ("a", 1)):
        _write_pair(
            tmp_path / "images" / "validation" / f"{name}.jpg",
            tmp_path / "annotations" / "validation" / f"{name}.png",
            value,
        )
    dataset = load_segmentation_dataset("ade20k", str(tmp_path))
    assert len(dataset) == 2 and dataset.pairs[0][0].endswith("a.jpg")
    (image, annotation), _ = list(dataset)
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    assert annotation.shape == (6, 8) and annotation[0, 0] == 1
    assert (dataset.ignore_labels, dataset.label_offset) == ((0, 255), -1)


@pytest.mark.parametrize(
    "name, classes, ignore, offset",
    [("voc", 21, (255,), 0), ("voc20", 20, (0, 255), -1)],
)
def test_voc_reader_follows_the_split_list(tmp_path, name, classes, ignore, offset):
    for i in ("2007_000033", "2007_000042"):
        _write_pair(
            tmp_path / "JPEGImages" / f"{i}.jpg",
            tmp_path / "SegmentationClass" / f"{i}.png",
            15,
            palette=True,
        )
    split = tmp_path / "ImageSets" / "Segmentation"
    split.mkdir(parents=True)
    (split / "val.txt").write_text("2007_000042\n")
    dataset = load_segmentation_dataset(name, str(tmp_path))
    assert len(dataset) == 1 and "2007_000042" in dataset.pairs[0][0]
    assert len(dataset.class_names) == classes
    assert (dataset.ignore_labels, dataset.label_offset) == (ignore, offset)
    _, annotation = next(iter(dataset))
    assert annotation[0, 0] == 15  # the palette index, not a colour


@pytest.mark.parametrize("name, classes, background", [("context", 59, False), ("context60", 60, True)])
def test_pascal_context_reader(tmp_path, name, classes, background):
    _write_pair(
        tmp_path / "JPEGImages" / "2008_000002.jpg",
        tmp_path / "SegmentationClassContext" / "2008_000002.png",
        7,
    )
    split = tmp_path / "ImageSets" / "SegmentationContext"
    split.mkdir(parents=True)
    (split / "val.txt").write_text("2008_000002\n")
    dataset = load_segmentation_dataset(name, str(tmp_path))
    assert len(dataset.class_names) == classes
    assert dataset.has_background == background


def test_reader_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        load_segmentation_dataset("ade20k", str(tmp_path))


def test_reader_names_a_listed_but_missing_file(tmp_path):
    split = tmp_path / "ImageSets" / "Segmentation"
    split.mkdir(parents=True)
    (split / "val.txt").write_text("nope\n")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_segmentation_dataset("voc", str(tmp_path))


def test_unknown_dataset_is_an_error():
    with pytest.raises(ValueError, match="cityscapes"):
        load_segmentation_dataset("cityscapes", "/tmp")


class _RecordingSegmenter:
    def set_classes(self, names, templates="tcl", background_threshold=None):
        self.classes = (names, templates, background_threshold)


def test_background_datasets_use_the_threshold_for_class_zero(tmp_path):
    dataset = type("D", (), dict(name="voc", class_names=VOC_CLASSES, has_background=True))
    segmenter = _RecordingSegmenter()
    set_dataset_classes(segmenter, dataset, background_threshold=0.2)
    assert segmenter.classes == (list(VOC_CLASSES[1:]), "tcl", 0.2)
    set_dataset_classes(segmenter, dataset)
    assert segmenter.classes == (list(VOC_CLASSES), "tcl", None)


# --- Retrieval and classification ------------------------------------------


def test_retrieval_recall_with_several_captions_per_image():
    images = np.eye(3)
    # Captions 0, 1 -> image 0; 2 -> image 1; 3 -> image 2.
    texts = np.array([[1, 0, 0], [0.2, 1, 0], [0, 0, 1], [0, 1, 0.1]], "float32")
    recall = retrieval_recall(images, texts, [0, 0, 1, 2], ks=(1, 2))
    # I->T top-1: image 0 -> caption 0 (hit), image 1 -> caption 3 (belongs to
    # image 2: miss), image 2 -> caption 2 (belongs to image 1: miss).
    assert recall["image_to_text@1"] == pytest.approx(1 / 3)
    # I->T top-2: image 1 ranks captions 3, 1 (both wrong); image 2 ranks 2, 3 (hit).
    assert recall["image_to_text@2"] == pytest.approx(2 / 3)
    # T->I top-1: caption 0 -> image 0 (hit), 1 -> image 1 (miss), 2 -> image
    # 2 (miss), 3 -> image 1 (miss).
    assert recall["text_to_image@1"] == pytest.approx(1 / 4)
    # T->I top-2: captions 1 and 3 find their image second; caption 2's image
    # ties with image 0 behind image 2, and a tie counts as a miss.
    assert recall["text_to_image@2"] == pytest.approx(3 / 4)


def test_retrieval_ties_count_against_the_model():
    recall = retrieval_recall(np.ones((2, 4)), np.ones((2, 4)), [0, 1], ks=(1, 2))
    assert recall["image_to_text@1"] == 0.0 and recall["image_to_text@2"] == 1.0


def test_retrieval_rejects_an_image_without_captions():
    with pytest.raises(ValueError, match="caption"):
        retrieval_recall(np.eye(3), np.eye(3)[:2], [0, 0])


def test_classification_accuracy_top1_and_top2():
    classes = np.eye(3)
    images = np.array([[1, 0.5, 0], [0.9, 1, 0], [0, 0.8, 1], [0.1, 0, 0]], "float32")
    accuracy = classification_accuracy(images, classes, [0, 0, 2, 1], ks=(1, 2))
    # top-1 predictions: 0, 1, 2, 0 -> hits on samples 0 and 2.
    assert accuracy["top1"] == pytest.approx(2 / 4)
    # top-2: sample 1 ranks {1, 0} (hit); sample 3 ranks 0 then ties 1 and 2 (miss).
    assert accuracy["top2"] == pytest.approx(3 / 4)


# --- PCA -----------------------------------------------------------------------


def test_pca_first_component_follows_the_direction_of_largest_variance():
    rng = np.random.default_rng(0)
    direction = np.zeros(8, "float32")
    direction[3] = 1.0
    strengths = np.linspace(-5, 5, 16, dtype="float32")
    features = strengths[:, None] * direction + 0.01 * rng.normal(size=(16, 8))
    first = np.asarray(pca_components(features.reshape(4, 4, 8), 1)).reshape(16)
    assert np.corrcoef(first, strengths)[0, 1] > 0.999  # sign fixed: positive loading


def test_pca_rgb_spans_zero_to_one_per_channel():
    rng = np.random.default_rng(1)
    rgb = np.asarray(pca_rgb(rng.normal(size=(3, 5, 16))))
    assert rgb.shape == (3, 5, 3)
    np.testing.assert_allclose(rgb.min(axis=(0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(rgb.max(axis=(0, 1)), 1.0, atol=1e-6)


# --- The eval recipe, end to end ------------------------------------------------

from tests.test_visualize import tiny_preset  # noqa: E402,F401  (fixture)


def _load_recipe():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "recipes", "eval_zero_shot_segmentation.py")
    spec = importlib.util.spec_from_file_location("eval_zero_shot_segmentation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_recipe_prints_miou_and_a_class_table(tiny_preset, tmp_path, capsys):
    # A custom set in the ADE20K layout (as ShapesWorld writes it): stored
    # value = class + 1, a classes.txt with background first.
    rng = np.random.default_rng(0)
    for name in ("x1", "x2"):
        image = tmp_path / "images" / "validation" / f"{name}.jpg"
        annotation = tmp_path / "annotations" / "validation" / f"{name}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        annotation.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype="uint8")).save(image)
        labels = rng.integers(1, 4, (30, 40)).astype("uint8")
        labels[0] = 255
        Image.fromarray(labels).save(annotation)
    (tmp_path / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    score = _load_recipe().main(
        [
            "--preset", tiny_preset, "--data", str(tmp_path), "--dataset", "ade20k",
            "--classes", str(tmp_path / "classes.txt"), "--background-threshold", "0.1",
            "--max-images", "1", "--short-side", "28", "--window", "28", "--stride", "21",
        ]
    )  # fmt: skip
    # One 30 x 40 image minus its ignored top row: every pixel is counted once,
    # and only stored values 1..3 (classes 0..2) occur.
    assert score.confusion.shape == (4, 4)
    assert score.confusion.sum() == 29 * 40
    assert score.confusion[3].sum() == 0
    out = capsys.readouterr().out
    assert "green" in out and "blue" in out
    assert f"ade20k mIoU (slide): {100 * score.mean_iou():.2f}" in out


def test_class_names_override_the_benchmark_list(tmp_path):
    _write_pair(
        tmp_path / "images" / "validation" / "a.jpg",
        tmp_path / "annotations" / "validation" / "a.png",
        1,
    )
    dataset = load_segmentation_dataset("ade20k", str(tmp_path), ["background", "red"])
    assert dataset.class_names == ("background", "red") and dataset.has_background
