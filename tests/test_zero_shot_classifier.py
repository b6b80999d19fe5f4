import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.models.prompt_templates import CLIP_IMAGENET_TEMPLATES
from keras_tipsv2.models.prompt_templates import TCL_TEMPLATES
from keras_tipsv2.models.prompt_templates import class_text_embeddings
from keras_tipsv2.models.prompt_templates import fill_templates
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
from tests.conftest import tiny_backbone_kwargs
from tests.spm_utils import train_tiny_spm


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    # Seeded: whether averaging unit vectors differs from normalising the raw
    # mean by more than the tolerance depends on the random weights.
    keras.utils.set_random_seed(1)
    tokenizer = TIPSv2Tokenizer(
        proto=train_tiny_spm(tmp_path_factory.mktemp("spm")), sequence_length=16
    )
    backbone = TIPSv2Backbone(
        **tiny_backbone_kwargs(text_vocabulary_size=tokenizer.vocabulary_size())
    )
    return backbone, tokenizer


TWO_TEMPLATES = ["a photo of a {}.", "art of the {}."]


def test_there_are_9_tcl_and_80_clip_templates_all_distinct():
    assert len(TCL_TEMPLATES) == len(set(TCL_TEMPLATES)) == 9
    assert len(CLIP_IMAGENET_TEMPLATES) == len(set(CLIP_IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in TCL_TEMPLATES + CLIP_IMAGENET_TEMPLATES)


def test_tcl_templates_are_clip_templates_except_the_plural_one():
    extra = [t for t in TCL_TEMPLATES if t not in CLIP_IMAGENET_TEMPLATES]
    assert extra == ["a photo of {}s."]


def test_fill_templates_is_class_major():
    prompts = fill_templates(["cat", "dog"], ["a {}.", "the {}!"])
    assert prompts == ["a cat.", "the cat!", "a dog.", "the dog!"]


def test_fill_templates_rejects_a_template_without_a_slot():
    with pytest.raises(ValueError, match="exactly one"):
        fill_templates(["cat"], ["a photo."])


def test_embeddings_average_unit_prompt_embeddings_then_renormalise(text_models):
    backbone, tokenizer = text_models
    classes, templates = ["cat", "house tree"], TWO_TEMPLATES
    # The four prompts, class-major, encoded in one batch and normalised here.
    prompts = [t.format(name) for name in classes for t in templates]
    tokens = tokenizer(prompts)
    raw = ops.convert_to_numpy(
        backbone.encode_text(tokens["token_ids"], tokens["padding_mask"])
    )
    unit = (raw / np.linalg.norm(raw, axis=-1, keepdims=True)).reshape(2, 2, -1)
    mean = unit.mean(axis=1)
    expected = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    got = ops.convert_to_numpy(
        class_text_embeddings(backbone, tokenizer, classes, templates)
    )
    assert got.shape == (2, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Averaging unit vectors differs from normalising the raw mean.
    raw_mean = raw.reshape(2, 2, -1).mean(axis=1)
    assert not np.allclose(
        got, raw_mean / np.linalg.norm(raw_mean, axis=-1, keepdims=True), atol=1e-3
    )


def test_embeddings_do_not_depend_on_the_batch_size(text_models):
    backbone, tokenizer = text_models
    classes = ["cat", "dog", "bird"]  # 6 prompts: one batch, or 4 + 2 padded
    one_batch = class_text_embeddings(backbone, tokenizer, classes, TWO_TEMPLATES)
    small_batches = class_text_embeddings(
        backbone, tokenizer, classes, TWO_TEMPLATES, batch_size=4
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(one_batch), ops.convert_to_numpy(small_batches), atol=1e-5
    )
    np.testing.assert_allclose(
        np.linalg.norm(ops.convert_to_numpy(one_batch), axis=-1), np.ones(3), atol=1e-5
    )


# --- TIPSv2ZeroShotClassifier -------------------------------------------------

from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter  # noqa: E402
from keras_tipsv2.models.tipsv2_zero_shot_classifier import (  # noqa: E402
    TIPSv2ZeroShotClassifier,
)


def unit_images(count=4, size=28, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, size, size, 3)).astype(
        "float32"
    )


def unit_cls(backbone, images, index):
    cls = ops.convert_to_numpy(backbone.encode_images(images)["cls_tokens"])[:, index]
    return cls / np.linalg.norm(cls, axis=-1, keepdims=True)


def test_set_classes_stores_the_ensembled_text_embeddings(text_models):
    backbone, tokenizer = text_models
    classifier = TIPSv2ZeroShotClassifier(backbone, tokenizer)
    classifier.set_classes(["cat", "dog"], templates=TWO_TEMPLATES)
    expected = class_text_embeddings(backbone, tokenizer, ["cat", "dog"], TWO_TEMPLATES)
    np.testing.assert_allclose(
        ops.convert_to_numpy(classifier.class_embeddings),
        ops.convert_to_numpy(expected),
        atol=1e-6,
    )
    assert classifier.class_names == ["cat", "dog"]


def test_probabilities_are_softmax_of_cosine_over_temperature(text_models):
    backbone, tokenizer = text_models
    classifier = TIPSv2ZeroShotClassifier(backbone, tokenizer)
    classifier.set_classes(["cat", "dog"], templates=TWO_TEMPLATES)
    images = unit_images()
    text = ops.convert_to_numpy(classifier.class_embeddings)
    logits = unit_cls(backbone, images, 0) @ text.T / 0.07  # initial temperature
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    got = ops.convert_to_numpy(classifier.predict_proba(images))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), np.ones(4), atol=1e-6)


def test_each_image_is_classified_as_its_own_prototype(text_models):
    # Known by construction: with class embeddings equal to the images' own
    # CLS embeddings, image i has cosine 1 with class i only.
    backbone, tokenizer = text_models
    images = unit_images()
    for cls_index in (0, 1):
        classifier = TIPSv2ZeroShotClassifier(backbone, tokenizer, cls_index=cls_index)
        classifier.set_class_embeddings(unit_cls(backbone, images, cls_index))
        np.testing.assert_array_equal(
            ops.convert_to_numpy(classifier.predict(images)), [0, 1, 2, 3]
        )
        proba = ops.convert_to_numpy(classifier.predict_proba(images))
        assert (np.argmax(proba, -1) == np.arange(4)).all()


def test_cls_index_selects_cls_2(text_models):
    backbone, tokenizer = text_models
    images = unit_images()
    classifier = TIPSv2ZeroShotClassifier(backbone, tokenizer)
    np.testing.assert_allclose(
        ops.convert_to_numpy(classifier.image_embeddings(images, cls_index=1)),
        unit_cls(backbone, images, 1),
        atol=1e-6,
    )
    assert not np.allclose(unit_cls(backbone, images, 0), unit_cls(backbone, images, 1))


def test_duplicate_classes_get_equal_probabilities(text_models):
    backbone, tokenizer = text_models
    classifier = TIPSv2ZeroShotClassifier(backbone, tokenizer)
    classifier.set_classes(["cat", "dog", "cat"], templates=TWO_TEMPLATES)
    proba = ops.convert_to_numpy(classifier.predict_proba(unit_images()))
    np.testing.assert_allclose(proba[:, 0], proba[:, 2], atol=1e-6)


def test_image_converter_accepts_raw_uint8_images(text_models):
    backbone, tokenizer = text_models
    converter = TIPSv2ImageConverter(image_size=(28, 28))
    raw = np.random.default_rng(1).integers(0, 256, (4, 40, 60, 3)).astype("uint8")
    with_converter = TIPSv2ZeroShotClassifier(backbone, tokenizer, converter)
    without = TIPSv2ZeroShotClassifier(backbone, tokenizer)
    for classifier in (with_converter, without):
        classifier.set_classes(["cat", "dog"], templates=TWO_TEMPLATES)
    np.testing.assert_allclose(
        ops.convert_to_numpy(with_converter.predict_proba(raw)),
        ops.convert_to_numpy(without.predict_proba(converter(raw))),
        atol=1e-6,
    )


def test_predicting_before_set_classes_is_an_error(text_models):
    backbone, tokenizer = text_models
    with pytest.raises(ValueError, match="set_classes"):
        TIPSv2ZeroShotClassifier(backbone, tokenizer).predict_proba(unit_images())


def test_bad_cls_index_and_embedding_shape_are_errors(text_models):
    backbone, tokenizer = text_models
    with pytest.raises(ValueError, match="cls_index"):
        TIPSv2ZeroShotClassifier(backbone, tokenizer, cls_index=2)
    with pytest.raises(ValueError, match=r"\(num_classes, 32\)"):
        TIPSv2ZeroShotClassifier(backbone, tokenizer).set_class_embeddings(
            np.ones((3, 8))
        )
