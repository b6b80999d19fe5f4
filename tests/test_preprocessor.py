import os

import numpy as np
from keras import ops
from keras_hub.src.tests.test_case import TestCase

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter
from keras_tipsv2.models.tipsv2_preprocessor import TIPSv2Preprocessor
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
from tests.conftest import tiny_backbone_kwargs
from tests.spm_utils import train_tiny_spm

PROMPTS = ["A Photo of a CAT.", "the dog in a video game"]


def images(batch=2, height=30, width=50):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (batch, height, width, 3)).astype("uint8")


def to_numpy(outputs):
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in outputs.items()}


class TIPSv2PreprocessorTest(TestCase):
    def setUp(self):
        self.tokenizer = TIPSv2Tokenizer(
            proto=train_tiny_spm(self.get_temp_dir()), sequence_length=16
        )
        self.image_converter = TIPSv2ImageConverter(image_size=(28, 28))
        self.init_kwargs = {
            "tokenizer": self.tokenizer,
            "image_converter": self.image_converter,
            "sequence_length": 16,
        }

    def test_outputs_are_the_tokenizer_and_converter_outputs(self):
        out = to_numpy(
            TIPSv2Preprocessor(**self.init_kwargs)(
                {"images": images(), "prompts": PROMPTS}
            )
        )
        self.assertEqual(set(out), {"images", "token_ids", "padding_mask"})
        tokens = to_numpy(self.tokenizer(PROMPTS))
        self.assertAllEqual(out["token_ids"], tokens["token_ids"])
        self.assertAllEqual(out["padding_mask"], tokens["padding_mask"])
        self.assertAllClose(
            out["images"], ops.convert_to_numpy(self.image_converter(images()))
        )
        self.assertEqual(out["images"].shape, (2, 28, 28, 3))

    def test_images_alone_give_only_images(self):
        out = TIPSv2Preprocessor(**self.init_kwargs)({"images": images()})
        self.assertEqual(set(out), {"images"})

    def test_prompts_alone_give_only_tokens(self):
        out = TIPSv2Preprocessor(**self.init_kwargs)({"prompts": PROMPTS})
        self.assertEqual(set(out), {"token_ids", "padding_mask"})
        self.assertEqual(tuple(out["token_ids"].shape), (2, 16))

    def test_unknown_keys_are_rejected(self):
        with self.assertRaisesRegex(ValueError, "unexpected input keys.*text"):
            TIPSv2Preprocessor(**self.init_kwargs)(
                {"prompts": PROMPTS, "text": PROMPTS}
            )

    def test_non_dict_input_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "'images' and/or 'prompts'"):
            TIPSv2Preprocessor(**self.init_kwargs)(PROMPTS)

    def test_direct_tf_data_and_grain_calls_agree(self):
        self.run_preprocessor_test(
            cls=TIPSv2Preprocessor,
            init_kwargs=self.init_kwargs,
            input_data={"images": images(), "prompts": PROMPTS},
        )

    def test_from_preset_without_preprocessor_json_feeds_the_backbone(self):
        preset = os.path.join(self.get_temp_dir(), "preset")
        backbone = TIPSv2Backbone(
            **tiny_backbone_kwargs(
                text_vocabulary_size=self.tokenizer.vocabulary_size()
            )
        )
        backbone.save_to_preset(preset)
        self.tokenizer.save_to_preset(preset)
        self.image_converter.save_to_preset(preset)
        self.assertFalse(os.path.exists(os.path.join(preset, "preprocessor.json")))

        preprocessor = TIPSv2Preprocessor.from_preset(preset, sequence_length=16)
        self.assertIsInstance(preprocessor.tokenizer, TIPSv2Tokenizer)
        self.assertIsInstance(preprocessor.image_converter, TIPSv2ImageConverter)
        x = {"images": images(), "prompts": PROMPTS}
        expected = to_numpy(TIPSv2Preprocessor(**self.init_kwargs)(x))
        got = to_numpy(preprocessor(x))
        for key in expected:
            self.assertAllClose(got[key], expected[key])
        outputs = TIPSv2Backbone.from_preset(preset)(preprocessor(x))
        self.assertEqual(tuple(outputs["text_embeddings"].shape), (2, 32))
        self.assertEqual(tuple(outputs["vision_cls_tokens"].shape), (2, 2, 32))
