"""The input contracts, the same at every entry point on every backend.

Images: uint8 means 0-255 and gives the same result as the float image /
255; floats outside [0, 1] and NaN are refused with an error that says what
to do; a file path works wherever an image does. Token ids outside the
vocabulary and block indices outside the tower are refused.
"""

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

from keras_tipsv2 import (
    TIPSv2Backbone,
    TIPSv2ImageConverter,
    TIPSv2Preprocessor,
    TIPSv2Tokenizer,
    TIPSv2ZeroShotClassifier,
    TIPSv2ZeroShotSegmenter,
)
from tests.conftest import tiny_backbone_kwargs
from tests.spm_utils import train_tiny_spm


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("contracts")
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(text_vocabulary_size=160))
    tokenizer = TIPSv2Tokenizer(proto=train_tiny_spm(str(root)), sequence_length=16)
    converter = TIPSv2ImageConverter(image_size=(28, 28))
    classifier = TIPSv2ZeroShotClassifier(backbone, tokenizer)
    classifier.set_classes(["cat", "dog"], templates=["a {}."])
    segmenter = TIPSv2ZeroShotSegmenter(backbone, tokenizer, short_side=None, window_size=28, window_stride=21)
    segmenter.set_classes(["cat", "dog"], templates=["a {}."])
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 3)).astype("uint8")
    path = str(root / "image.png")
    Image.fromarray(image).save(path)
    return {
        "backbone": backbone,
        "converter": converter,
        "preprocessor": TIPSv2Preprocessor(tokenizer, converter),
        "classifier": classifier,
        "segmenter": segmenter,
        "image": image,
        "path": path,
    }


def _numpy(x):
    if isinstance(x, dict):
        return {k: _numpy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_numpy(v) for v in x]
    return np.asarray(ops.convert_to_numpy(x))


# Each entry point as a function of one batch of images (B, H, W, 3), or of
# one image for the segmenter; `batch` says which.
ENTRY_POINTS = {
    "encode_images": (lambda p, x: p["backbone"].encode_images(x)["patch_tokens"], True),
    "get_intermediate_layers": (lambda p, x: p["backbone"].get_intermediate_layers(x, [0])[0]["patch_tokens"], True),
    "image_converter": (lambda p, x: p["converter"](x), True),
    "preprocessor": (lambda p, x: p["preprocessor"]({"images": x})["images"], True),
    "classifier": (lambda p, x: p["classifier"].predict_proba(x), True),
    "segmenter": (lambda p, x: p["segmenter"].segment(x, mode="whole")["scores"], False),
}


def _as_input(parts, kind, batch):
    image = parts["image"]
    if kind == "uint8":
        x = image
    elif kind == "float":
        x = image.astype("float32") / 255.0
    elif kind == "float_0_255":
        x = image.astype("float32")
    elif kind == "nan":
        x = image.astype("float32") / 255.0
        x[3, 4, 1] = np.nan
    elif kind == "backend_tensor_0_255":
        x = ops.convert_to_tensor(image.astype("float32"))
        return x[None] if batch else x
    elif kind == "path":
        return [parts["path"]] if batch else parts["path"]
    return x[None] if batch else x


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_uint8_and_paths_mean_the_float_image(parts, entry):
    run, batch = ENTRY_POINTS[entry]
    expected = _numpy(run(parts, _as_input(parts, "float", batch)))
    for kind in ("uint8", "path"):
        np.testing.assert_allclose(_numpy(run(parts, _as_input(parts, kind, batch))), expected, atol=1e-5)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(
    "kind, words",
    [
        ("float_0_255", ["must be in [0, 1]", "divide by 255"]),
        ("nan", ["NaN", "finite"]),
        ("backend_tensor_0_255", ["must be in [0, 1]", "divide by 255"]),
    ],
)
def test_out_of_range_and_non_finite_images_are_refused(parts, entry, kind, words):
    run, batch = ENTRY_POINTS[entry]
    with pytest.raises(ValueError) as info:
        run(parts, _as_input(parts, kind, batch))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("bad_id", [-1, 160])
def test_token_ids_outside_the_vocabulary_are_refused(parts, bad_id):
    ids = np.array([[5, bad_id, 7]], "int32")
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 160\)"):
        parts["backbone"].encode_text(ids, np.ones_like(ids))
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 160\)"):
        parts["backbone"].encode_text(ops.convert_to_tensor(ids), ops.convert_to_tensor(np.ones_like(ids)))


def test_the_last_vocabulary_id_is_accepted(parts):
    ids = np.array([[0, 159]], "int32")
    assert tuple(parts["backbone"].encode_text(ids, np.ones_like(ids)).shape) == (1, 32)


def test_block_indices_count_from_the_end_and_n_means_the_last_blocks(parts):
    backbone, images = parts["backbone"], parts["image"][None]

    def tokens(indices):
        return [_numpy(out["patch_tokens"]) for out in backbone.get_intermediate_layers(images, indices)]

    last_two = tokens([0, 1])
    for same in ([-2, -1], 2):
        for got, want in zip(tokens(same), last_two):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("indices", [[2], [-3], 3, 0, [True], [0.5]])
def test_block_indices_outside_the_tower_are_refused(parts, indices):
    with pytest.raises(ValueError, match="block|Block|indices"):
        parts["backbone"].get_intermediate_layers(parts["image"][None], indices)


def test_symbolic_inputs_still_build_a_model(parts):
    backbone = parts["backbone"]
    images = keras.Input((28, 28, 3))
    model = keras.Model(images, backbone.encode_images(images)["cls_tokens"])
    x = parts["image"][None].astype("float32") / 255.0
    np.testing.assert_allclose(
        _numpy(model(x)), _numpy(backbone.encode_images(x)["cls_tokens"]), atol=1e-5
    )
