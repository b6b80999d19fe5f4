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
    tokenizer = TIPSv2Tokenizer(
        proto=train_tiny_spm(tmp_path_factory.mktemp("spm")), sequence_length=16
    )
    backbone = TIPSv2Backbone(
        **tiny_backbone_kwargs(text_vocabulary_size=tokenizer.vocabulary_size())
    )
    return backbone, tokenizer


def unit_text_embedding(backbone, tokenizer, prompt):
    tokens = tokenizer([prompt])
    x = ops.convert_to_numpy(
        backbone.encode_text(tokens["token_ids"], tokens["padding_mask"])
    )[0]
    return x / np.linalg.norm(x)


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
    classes, templates = ["cat", "house tree"], ["a photo of a {}.", "art of the {}."]
    expected = []
    for name in classes:
        mean = np.mean(
            [unit_text_embedding(backbone, tokenizer, t.format(name)) for t in templates],
            axis=0,
        )
        expected.append(mean / np.linalg.norm(mean))
    got = ops.convert_to_numpy(
        class_text_embeddings(backbone, tokenizer, classes, templates)
    )
    assert got.shape == (2, 32)
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)


def test_embeddings_do_not_depend_on_the_batch_size(text_models):
    backbone, tokenizer = text_models
    classes = ["cat", "dog", "bird"]
    one_batch = class_text_embeddings(backbone, tokenizer, classes, TCL_TEMPLATES)
    small_batches = class_text_embeddings(
        backbone, tokenizer, classes, TCL_TEMPLATES, batch_size=4
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(one_batch), ops.convert_to_numpy(small_batches), atol=1e-5
    )
    np.testing.assert_allclose(
        np.linalg.norm(ops.convert_to_numpy(one_batch), axis=-1), np.ones(3), atol=1e-5
    )
