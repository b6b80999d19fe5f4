import os

import keras_hub
import numpy as np
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text
from keras_hub.src.tests.test_case import TestCase

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
from tests.conftest import tiny_backbone_kwargs
from tests.spm_utils import train_tiny_spm

LONG_TEXT = " ".join(["A photo of the small cat"] * 20)  # ~100 tokens
TEXTS = [
    "A Photo of a CAT.",  # mixed case
    "ÉCOLE Straße",  # non-ASCII capitals and a lowercase non-ASCII word
    "🐱 on a mat 🐶",  # emoji: unknown to the tiny model
    LONG_TEXT,  # longer than 64 tokens
    "",  # empty
]


def reference_token_ids(proto_path, texts, sequence_length=64):
    """The official procedure (text_encoder.Tokenizer) for the ids."""
    with open(proto_path, "rb") as f:
        tokenizer = tf_text.SentencepieceTokenizer(
            model=f.read(), add_bos=False, add_eos=False
        )
    ragged = tokenizer.tokenize(tf.strings.lower(tf.constant(texts)))
    dense = ragged.to_tensor(default_value=0).numpy()
    dense = dense[:, :sequence_length]
    return np.pad(dense, ((0, 0), (0, sequence_length - dense.shape[1])))


def true_lengths(proto_path, texts, sequence_length=64):
    processor = spm.SentencePieceProcessor(model_file=proto_path)
    lowered = tf.strings.lower(tf.constant(texts)).numpy()
    return [
        min(len(processor.encode(t.decode("utf-8"))), sequence_length)
        for t in lowered
    ]


def numpy_dict(outputs):
    return {k: np.asarray(tf.convert_to_tensor(v)) for k, v in outputs.items()}


class TIPSv2TokenizerTest(TestCase):
    def setUp(self):
        self.proto = train_tiny_spm(self.get_temp_dir())

    def test_ids_match_the_reference_procedure(self):
        out = numpy_dict(TIPSv2Tokenizer(proto=self.proto)(TEXTS))
        self.assertAllEqual(
            out["token_ids"], reference_token_ids(self.proto, TEXTS)
        )

    def test_only_ascii_letters_are_lowercased(self):
        processor = spm.SentencePieceProcessor(model_file=self.proto)
        ids = numpy_dict(TIPSv2Tokenizer(proto=self.proto)("ÉCOLE"))["token_ids"]
        # "École": É stays a capital and is unknown to the tiny model.
        expected = processor.encode("École")
        self.assertAllEqual(ids[: len(expected)], expected)
        self.assertIn(1, expected)  # the unk id
        # Python's str.lower() would give "école", which the model knows.
        self.assertNotIn(1, processor.encode("école"))

    def test_padding_mask_marks_true_lengths_when_a_row_is_truncated(self):
        # The reference marks every position as real once any row of the
        # batch exceeds 64 tokens; here each row keeps its own length.
        out = numpy_dict(TIPSv2Tokenizer(proto=self.proto)(TEXTS))
        lengths = true_lengths(self.proto, TEXTS)
        self.assertEqual(lengths[3], 64)
        self.assertLess(lengths[0], 10)
        self.assertAllEqual(out["padding_mask"].sum(axis=1), lengths)
        expected = np.arange(64)[None, :] < np.array(lengths)[:, None]
        self.assertAllEqual(out["padding_mask"], expected.astype("int32"))

    def test_padding_uses_id_zero(self):
        out = numpy_dict(TIPSv2Tokenizer(proto=self.proto)(TEXTS))
        self.assertAllEqual(
            out["token_ids"][out["padding_mask"] == 0],
            np.zeros(int((out["padding_mask"] == 0).sum())),
        )

    def test_empty_string_gives_an_all_padding_row(self):
        out = numpy_dict(TIPSv2Tokenizer(proto=self.proto)(["a cat", ""]))
        self.assertAllEqual(out["token_ids"][1], np.zeros(64))
        self.assertAllEqual(out["padding_mask"][1], np.zeros(64))
        self.assertEqual(out["padding_mask"][0].sum(), 2)

    def test_single_string_gives_unbatched_int32_rows(self):
        out = TIPSv2Tokenizer(proto=self.proto, sequence_length=16)("a cat")
        self.assertEqual(tuple(out["token_ids"].shape), (16,))
        self.assertDTypeEqual(out["token_ids"], "int32")
        self.assertDTypeEqual(out["padding_mask"], "int32")

    def test_call_sequence_length_overrides_the_layer_default(self):
        tokenizer = TIPSv2Tokenizer(proto=self.proto)
        out = tokenizer(TEXTS, sequence_length=5)
        self.assertEqual(tuple(out["token_ids"].shape), (5, 5))
        self.assertAllEqual(
            np.asarray(out["token_ids"]),
            reference_token_ids(self.proto, TEXTS, sequence_length=5),
        )

    def test_no_bos_or_eos_are_added(self):
        processor = spm.SentencePieceProcessor(model_file=self.proto)
        out = numpy_dict(TIPSv2Tokenizer(proto=self.proto)("a photo"))
        self.assertAllEqual(
            out["token_ids"][: out["padding_mask"].sum()],
            processor.encode("a photo"),
        )

    def test_rejects_bos(self):
        with self.assertRaisesRegex(ValueError, "add_bos"):
            TIPSv2Tokenizer(proto=self.proto, add_bos=True)

    def test_rejects_non_string_inputs(self):
        with self.assertRaisesRegex(ValueError, "expects strings"):
            TIPSv2Tokenizer(proto=self.proto)(["a cat", 3])

    def test_direct_tf_data_and_grain_calls_agree(self):
        texts = ["A Photo of a CAT.", "ÉCOLE Straße", LONG_TEXT, ""]
        lowered = [
            t.decode("utf-8")
            for t in tf.strings.lower(tf.constant(texts)).numpy()
        ]
        processor = spm.SentencePieceProcessor(model_file=self.proto)
        # Detokenizing undoes the tokenization up to lowercasing, unknown
        # pieces and truncation.
        expected_text = [
            processor.decode(processor.encode(t)[:16]) for t in lowered
        ]
        self.run_preprocessing_layer_test(
            cls=TIPSv2Tokenizer,
            init_kwargs={"proto": self.proto, "sequence_length": 16},
            input_data=texts,
            expected_detokenize_output=expected_text,
        )

    def test_preset_round_trip_restores_the_proto(self):
        preset = os.path.join(self.get_temp_dir(), "preset")
        TIPSv2Backbone(**tiny_backbone_kwargs()).save_to_preset(preset)
        tokenizer = TIPSv2Tokenizer(proto=self.proto, sequence_length=16)
        tokenizer.save_to_preset(preset)
        self.assertTrue(
            os.path.exists(
                os.path.join(preset, "assets", "tokenizer", "vocabulary.spm")
            )
        )
        restored = keras_hub.tokenizers.Tokenizer.from_preset(preset)
        self.assertIsInstance(restored, TIPSv2Tokenizer)
        self.assertEqual(restored.sequence_length, 16)
        restored_out = numpy_dict(restored(TEXTS))
        for key, value in numpy_dict(tokenizer(TEXTS)).items():
            self.assertAllEqual(restored_out[key], value)


class TransformersParityTest(TestCase):
    """Parity with transformers' Tipsv2Tokenizer converted from the .model.

    transformers converts the proto to a BPE `tokenizers` model that assumes
    byte fallback (a model without byte pieces loses unknown characters there
    instead of giving the unk id), and it lowercases with Unicode rules, so
    "É" becomes "é". The test therefore uses a byte-fallback model and
    compares with transformers' lowercasing switched off on ASCII-lowercased
    text: the ids must then agree on every input.
    """

    def test_ids_and_mask_match_transformers(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import Tipsv2Tokenizer

        hf_dir = self.get_temp_dir()
        proto = train_tiny_spm(hf_dir, byte_fallback=True)
        os.replace(proto, os.path.join(hf_dir, "tokenizer.model"))
        hf_tokenizer = Tipsv2Tokenizer.from_pretrained(
            hf_dir, do_lower_case=False
        )
        ours = numpy_dict(
            TIPSv2Tokenizer(proto=os.path.join(hf_dir, "tokenizer.model"))(TEXTS)
        )
        lowered = [
            t.decode("utf-8")
            for t in tf.strings.lower(tf.constant(TEXTS)).numpy()
        ]
        theirs = hf_tokenizer(
            lowered, padding="max_length", truncation=True, max_length=64
        )
        self.assertAllEqual(ours["token_ids"], theirs["input_ids"])
        self.assertAllEqual(ours["padding_mask"], theirs["attention_mask"])
