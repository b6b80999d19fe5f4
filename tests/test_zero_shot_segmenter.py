import numpy as np
import pytest
from keras import ops

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter
from keras_tipsv2.models.tipsv2_images import short_side_size
from keras_tipsv2.models.tipsv2_zero_shot_segmenter import sliding_windows
from tests.conftest import tiny_backbone_kwargs

PATCH = 14
# Pure colours, one per class; their patch means are one-hot feature vectors.
COLOURS = np.eye(3, dtype="float32")


class ColourBackbone:
    """A stand-in backbone whose patch token is the patch's mean colour.

    With class embeddings = the identity, each patch's cosine scores are the
    one-hot code of its colour, so the right segmentation is known exactly.
    """

    vision_patch_size = PATCH

    def __init__(self):
        self.calls = []

    def encode_images(self, images, values_trick=None):
        self.calls.append((tuple(images.shape), values_trick))
        pooled = ops.average_pool(images, PATCH, PATCH, padding="valid")
        return {"patch_tokens": pooled}


def stripes(widths, height=42, colours=COLOURS):
    """An image of vertical colour stripes and its label map."""
    labels = np.concatenate([np.full(w, i) for i, w in enumerate(widths)])
    labels = np.tile(labels, (height, 1))
    return colours[labels], labels


def colour_segmenter(**kwargs):
    kwargs.setdefault("short_side", None)
    segmenter = TIPSv2ZeroShotSegmenter(ColourBackbone(), **kwargs)
    segmenter.set_class_embeddings(np.eye(3), ["red", "green", "blue"])
    return segmenter


# --- The sliding-window grid ------------------------------------------------


def test_sliding_windows_at_reference_scale_for_odd_sizes():
    # ADE-like 500 x 337 (and its short-side-448 version 664 x 448).
    assert sliding_windows(500, 448, 336) == [(0, 448), (52, 500)]
    assert sliding_windows(337, 448, 336) == [(0, 337)]
    assert sliding_windows(664, 448, 336) == [(0, 448), (216, 664)]
    assert sliding_windows(448, 448, 336) == [(0, 448)]


def test_sliding_windows_at_tiny_scale_push_the_last_window_to_the_border():
    assert sliding_windows(37, 28, 21) == [(0, 28), (9, 37)]
    assert sliding_windows(50, 28, 21) == [(0, 28), (21, 49), (22, 50)]
    assert sliding_windows(20, 28, 21) == [(0, 20)]


@pytest.mark.parametrize("size", [28, 29, 37, 49, 50, 71, 100])
def test_sliding_windows_count_follows_the_tcl_formula_and_cover_every_pixel(size):
    spans = sliding_windows(size, 28, 21)
    assert len(spans) == max(size - 28 + 21 - 1, 0) // 21 + 1
    covered = np.zeros(size, bool)
    for start, end in spans:
        assert end - start == min(28, size)
        covered[start:end] = True
    assert covered.all()


def test_sliding_windows_reject_a_stride_that_leaves_gaps():
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(100, 28, 29)


def test_short_side_size_truncates_the_long_side_like_torchvision():
    assert short_side_size(500, 337, 448) == (664, 448)
    assert short_side_size(337, 500, 448) == (448, 664)
    assert short_side_size(37, 50, 28) == (28, 37)


# --- Known-by-construction segmentations ----------------------------------


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_segment_recovers_vertical_stripes_exactly(mode):
    image, labels = stripes([28, 42, 28])  # 3 x 7 patches
    segmenter = colour_segmenter(window_size=28, window_stride=14)
    result = segmenter.segment(image, mode=mode)
    np.testing.assert_array_equal(result["labels"], labels)
    assert result["scores"].shape == (42, 98, 3)


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_segment_recovers_horizontal_stripes_exactly(mode):
    image, labels = stripes([14, 28, 14], height=56)
    image, labels = image.transpose(1, 0, 2), labels.T  # 56 x 56, rows vary
    segmenter = colour_segmenter(window_size=28, window_stride=14)
    result = segmenter.segment(image, mode=mode)
    np.testing.assert_array_equal(result["labels"], labels)


def test_slide_encodes_one_window_per_grid_cell_of_the_formula():
    image, _ = stripes([28, 42, 28])  # 42 x 98
    segmenter = colour_segmenter(window_size=28, window_stride=14, batch_size=4)
    segmenter.segment(image, mode="slide")
    # rows: (42-28+13)//14+1 = 2; cols: (98-28+13)//14+1 = 6 -> 12 windows.
    batches = [shape[0] for shape, _ in segmenter.backbone.calls]
    assert batches == [4, 4, 4]
    assert {shape[1:3] for shape, _ in segmenter.backbone.calls} == {(28, 28)}


def test_slide_scores_are_window_averaged_probabilities():
    image, _ = stripes([28, 42, 28])
    result = colour_segmenter(window_size=28, window_stride=14).segment(image)
    np.testing.assert_allclose(result["scores"].sum(-1), 1.0, atol=1e-5)
    # Inside a stripe every window agrees: softmax([1, 0, 0]).
    expected = np.exp(1.0) / (np.exp(1.0) + 2.0)
    np.testing.assert_allclose(result["scores"][20, 3, 0], expected, atol=1e-5)


def test_whole_scores_are_raw_cosines():
    image, _ = stripes([28, 42, 28])
    result = colour_segmenter().segment(image, mode="whole")
    np.testing.assert_allclose(result["scores"][20, 50], [0.0, 1.0, 0.0], atol=1e-6)


def test_background_threshold_labels_unmatched_pixels_zero():
    colours = np.concatenate([COLOURS, np.zeros((1, 3), "float32")])
    image, labels = stripes([28, 28, 14, 28], colours=colours)  # last is black
    segmenter = colour_segmenter(window_size=28, window_stride=14)
    segmenter.set_class_embeddings(np.eye(3), background_threshold=0.5)
    assert segmenter.label_names == ["background", "class_0", "class_1", "class_2"]
    for mode in ("slide", "whole"):
        result = segmenter.segment(image, mode=mode)
        np.testing.assert_array_equal(result["labels"], (labels + 1) % 4)
        assert result["scores"].shape[-1] == 4


def test_segment_returns_maps_at_the_original_size_after_short_side_resize():
    image, _ = stripes([14, 23], height=37)  # 37 x 37 -> short side 28
    segmenter = colour_segmenter(short_side=28, window_size=28, window_stride=21)
    result = segmenter.segment((image * 255).astype("uint8"), mode="slide")
    assert result["labels"].shape == (37, 37)
    assert segmenter.backbone.calls[0][0] == (1, 28, 28, 3)


def test_segment_resizes_to_a_requested_output_size():
    image, _ = stripes([28, 42, 28])
    result = colour_segmenter().segment(image, mode="whole", output_size=(10, 20))
    assert result["labels"].shape == (10, 20)
    assert result["scores"].shape == (10, 20, 3)


def test_whole_mode_resizes_sides_up_to_a_patch_multiple():
    image, _ = stripes([20, 20], height=30)  # 30 x 40 -> 42 x 42
    segmenter = colour_segmenter()
    result = segmenter.segment(image, mode="whole")
    assert segmenter.backbone.calls[0][0] == (1, 42, 42, 3)
    assert result["labels"].shape == (30, 40)


@pytest.mark.parametrize("trick", ["values", "values_no_residual", None])
def test_segment_passes_the_values_trick_to_the_backbone(trick):
    image, _ = stripes([28, 42, 28])
    segmenter = colour_segmenter()
    segmenter.segment(image, mode="whole", values_trick=trick)
    assert segmenter.backbone.calls[0][1] == trick


# --- With a real (tiny) backbone ------------------------------------------


@pytest.fixture(scope="module")
def tiny_backbone():
    return TIPSv2Backbone(**tiny_backbone_kwargs())


def test_whole_scores_equal_cosines_of_values_trick_patch_tokens(tiny_backbone):
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(28, 42, 3)).astype("float32")
    classes = rng.normal(size=(5, 32)).astype("float32")
    segmenter = TIPSv2ZeroShotSegmenter(tiny_backbone, short_side=None)
    segmenter.set_class_embeddings(classes)
    result = segmenter.segment(image, mode="whole", output_size=(2, 3))

    tokens = tiny_backbone.encode_images(image[None], values_trick="values")
    tokens = ops.convert_to_numpy(tokens["patch_tokens"])[0]
    tokens /= np.linalg.norm(tokens, axis=-1, keepdims=True)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    np.testing.assert_allclose(result["scores"], tokens @ classes.T, atol=1e-5)
    np.testing.assert_array_equal(result["labels"], (tokens @ classes.T).argmax(-1))


def test_single_window_slide_is_the_softmax_of_whole(tiny_backbone):
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(28, 28, 3)).astype("float32")
    segmenter = TIPSv2ZeroShotSegmenter(
        tiny_backbone, short_side=None, window_size=28, window_stride=21
    )
    segmenter.set_class_embeddings(rng.normal(size=(4, 32)))
    slide = segmenter.segment(image, mode="slide")["scores"]
    whole = segmenter.segment(image, mode="whole")["scores"]
    expected = np.exp(whole) / np.exp(whole).sum(-1, keepdims=True)
    np.testing.assert_allclose(slide, expected, atol=1e-5)


# --- Bad input ---------------------------------------------------------------


def test_segment_before_classes_are_set_is_an_error():
    with pytest.raises(ValueError, match="set_classes"):
        TIPSv2ZeroShotSegmenter(ColourBackbone()).segment(np.zeros((28, 28, 3)))


def test_segment_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        colour_segmenter().segment(np.zeros((28, 28, 3)), mode="tiles")


def test_segment_rejects_a_non_rgb_image():
    with pytest.raises(ValueError, match="RGB"):
        colour_segmenter().segment(np.zeros((28, 28)))


def test_class_names_must_match_the_embeddings():
    with pytest.raises(ValueError, match="class names"):
        colour_segmenter().set_class_embeddings(np.eye(3), ["a", "b"])


# --- The post-processing, against a plain numpy formulation ------------------


def test_slide_probabilities_average_each_windows_softmax_where_windows_overlap(rng):
    from keras_tipsv2.models.tipsv2_zero_shot_segmenter import slide_probabilities

    size = (30, 50)
    boxes = tuple(
        (top, top + 20, left, left + 20) for top in (0, 10) for left in (0, 15, 30)
    )
    scores = rng.standard_normal((6, 5, 5, 3)).astype("float32") * 3
    got = ops.convert_to_numpy(slide_probabilities(scores, boxes, size))
    windows = ops.convert_to_numpy(
        ops.image.resize(scores, (20, 20), interpolation="bilinear")
    )
    canvas = np.zeros(size + (3,))
    counts = np.zeros(size + (1,))
    for window, (top, bottom, left, right) in zip(windows, boxes):
        e = np.exp(window - window.max(-1, keepdims=True))
        canvas[top:bottom, left:right] += e / e.sum(-1, keepdims=True)
        counts[top:bottom, left:right] += 1
    assert counts.min() == 1 and counts.max() == 4
    np.testing.assert_allclose(got, canvas / counts, atol=1e-5)


def test_upsampling_to_the_same_size_is_the_identity(rng):
    from keras_tipsv2.models.tipsv2_images import upsampled_scores

    scores = rng.standard_normal((6, 9, 4)).astype("float32")
    resized = ops.image.resize(scores[None], (6, 9), interpolation="bilinear", antialias=False)
    # The shortcut upsampled_scores takes is what the resize computes anyway.
    np.testing.assert_allclose(ops.convert_to_numpy(resized)[0], scores, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(upsampled_scores(scores, (6, 9))), scores)


def test_segment_and_class_embeddings_record_no_gradients(tiny_backbone, rng):
    # On torch the backbone's weights require gradients; recording autograd's
    # graph for maps that leave as numpy would only cost time and memory.
    import keras

    grad_enabled = []
    encode_images = tiny_backbone.encode_images

    def spy(*args, **kwargs):
        if keras.config.backend() == "torch":
            import torch

            grad_enabled.append(torch.is_grad_enabled())
        return encode_images(*args, **kwargs)

    tiny_backbone.encode_images = spy
    segmenter = TIPSv2ZeroShotSegmenter(tiny_backbone, short_side=None, window_size=28, window_stride=14)
    segmenter.set_class_embeddings(rng.standard_normal((3, 32)))
    result = segmenter.segment(rng.random((28, 42, 3)).astype("float32"))
    assert result["labels"].shape == (28, 42)
    if keras.config.backend() == "torch":
        assert grad_enabled == [False]
        assert not segmenter.class_embeddings.requires_grad
