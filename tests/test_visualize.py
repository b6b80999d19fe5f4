import numpy as np
import pytest
from PIL import Image
from PIL import ImageDraw

from keras_tipsv2.evaluation.pictures import PALETTE
from keras_tipsv2.evaluation.pictures import pca_picture
from keras_tipsv2.evaluation.pictures import segmentation_picture
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
from keras_tipsv2.visualize import main as visualize
from keras_tipsv2.evaluation.pca import patch_aligned_image
from tests.conftest import tiny_backbone_kwargs
from tests.spm_utils import train_tiny_spm


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    """A saved tiny backbone + tokenizer, as `from_preset` loads them."""
    root = tmp_path_factory.mktemp("preset")
    # The tiny SentencePiece model has 150 pieces.
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(text_vocabulary_size=150))
    tokenizer = TIPSv2Tokenizer(proto=train_tiny_spm(root), sequence_length=16)
    preset = str(root / "tiny_preset")
    backbone.save_to_preset(preset)
    tokenizer.save_to_preset(preset)
    return preset


@pytest.fixture
def scene_path(tmp_path):
    """42 x 63: sky band, grass, a red disc."""
    image = Image.new("RGB", (63, 42), (40, 160, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, 62, 9], fill=(80, 140, 230))
    draw.ellipse([20, 14, 40, 34], fill=(220, 60, 40))
    path = tmp_path / "scene.png"
    image.save(path)
    return str(path)


def test_patch_aligned_image_has_whole_patches():
    image = np.zeros((37, 50, 3), "uint8")
    assert patch_aligned_image(image, 28, 14).shape == (28, 28, 3)


def test_pca_picture_puts_the_map_beside_the_image():
    image = np.zeros((28, 42, 3), "uint8")
    pca = np.zeros((2, 3, 3), "float32")
    pca[0, 0] = 1.0  # one white patch
    picture = np.asarray(pca_picture(image, pca))
    assert picture.shape == (28, 42 + 4 + 42, 3)
    right = picture[:, 46:]
    assert (right[:14, :14] == 255).all() and (right[14:, 14:] == 0).all()


def test_segmentation_picture_blends_label_colours_and_adds_a_legend():
    image = np.zeros((20, 30, 3), "uint8")
    labels = np.zeros((20, 30), "int64")
    labels[:, 15:] = 2
    picture = np.asarray(segmentation_picture(image, labels, ["a", "b", "c"], alpha=1.0))
    overlay = picture[:, 34:64]
    np.testing.assert_array_equal(overlay[5, 2], PALETTE[0])
    np.testing.assert_array_equal(overlay[5, 20], PALETTE[2])
    legend = picture[:, 68:]
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert tuple(PALETTE[0]) in colours and tuple(PALETTE[2]) in colours
    assert tuple(PALETTE[1]) not in colours  # only classes present are listed


def test_segmentation_picture_rejects_labels_of_another_size():
    with pytest.raises(ValueError, match="labels"):
        segmentation_picture(np.zeros((4, 4, 3)), np.zeros((2, 2), int), ["a"])


def test_visualize_writes_a_pca_picture(tiny_preset, scene_path, tmp_path):
    out = str(tmp_path / "pca.png")
    visualize([scene_path, "--preset", tiny_preset, "--out", out, "--short-side", "42"])
    picture = np.asarray(Image.open(out))
    assert picture.shape == (42, 56 + 4 + 56, 3)  # 42 x 63 -> 42 x 56 patches
    pca = picture[:, 60:].reshape(3, 14, 4, 14, 3)
    # Each patch is one flat cell of colour, and the map is not flat.
    assert (pca == pca[:, :1, :, :1]).all()
    assert len({tuple(c) for c in pca[:, 0, :, 0].reshape(-1, 3)}) > 1


def test_visualize_writes_a_segmentation_overlay(tiny_preset, scene_path, tmp_path):
    out = str(tmp_path / "seg.png")
    visualize(
        [
            scene_path, "--preset", tiny_preset, "--out", out,
            "--short-side", "28", "--segment", "cat, grass,sky",
        ]
    )  # fmt: skip
    picture = Image.open(out)
    assert picture.height >= 42 and picture.width > 2 * 63
