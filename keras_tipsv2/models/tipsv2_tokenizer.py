import keras
import numpy as np
from keras_hub.tokenizers import SentencePieceTokenizer
from keras_hub.src.utils.tensor_utils import convert_preprocessing_outputs_python
from keras_hub.src.utils.tensor_utils import convert_to_numpy
from keras_hub.src.utils.tensor_utils import is_int_dtype
from keras_hub.src.utils.tensor_utils import preprocessing_function
from keras_hub.src.utils.tensor_utils import tf

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone

# The reference lowercases with `tf.strings.lower`, whose default encoding ""
# maps only the bytes A-Z; every UTF-8 byte of a non-ASCII character is >= 0x80
# and stays as it is. This table does the same on Python strings.
_ASCII_LOWER = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
)


def ascii_lower(text):
    """Lowercases A-Z only, as `tf.strings.lower(text)` does ("École" stays)."""
    return text.translate(_ASCII_LOWER)


def _python_texts(inputs):
    """Returns (list of str, batched) for a str, bytes, list or string array."""

    def as_str(value):
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, str):
            return value
        raise ValueError(
            "TIPSv2Tokenizer expects strings; got an element of type "
            f"{type(value).__name__}: {value!r}"
        )

    if isinstance(inputs, (str, bytes)):
        return [as_str(inputs)], False
    if isinstance(inputs, (list, tuple)):
        return [as_str(value) for value in inputs], True
    array = convert_to_numpy(inputs)
    if array.ndim == 0:
        return [as_str(array.item())], False
    if array.ndim == 1:
        return [as_str(value) for value in array.tolist()], True
    raise ValueError(
        "TIPSv2Tokenizer expects a string or a 1-D batch of strings; got an "
        f"array of shape {array.shape}."
    )


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2Tokenizer(SentencePieceTokenizer):
    """The TIPS / TIPSv2 text tokenizer: ASCII lowercasing + SentencePiece.

    Follows the official `text_encoder.Tokenizer`: strings are lowercased with
    `tf.strings.lower` (ASCII letters only), tokenised with no BOS and no EOS,
    padded with id 0 and truncated to `sequence_length`. Unlike the reference,
    `padding_mask` always marks each row's true length, also when some row of
    the batch was truncated (the reference then marks every position of every
    row as real).

    Calling the layer returns `{"token_ids", "padding_mask"}`, both int32 of
    shape (batch, sequence_length) (or (sequence_length,) for one string),
    with 1 in `padding_mask` for real tokens. `tokenize()` returns the ids
    alone, as other KerasHub tokenizers do. Works eagerly on every backend,
    inside `tf.data` and inside Grain pipelines.

    The SentencePiece proto is saved as a preset asset
    (`assets/tokenizer/vocabulary.spm`) by `save_to_preset`.

    Args:
        proto: path to a SentencePiece `.model` file, or its bytes.
        sequence_length: output length, 64 for every published model.

    Example:
    ```python
    tokenizer = TIPSv2Tokenizer(proto="tokenizer.model")
    out = tokenizer(["A photo of a cat.", "a dog"])
    out["token_ids"].shape, out["padding_mask"].shape    # (2, 64), (2, 64)
    ```
    """

    backbone_cls = TIPSv2Backbone
    pad_token_id = 0

    def __init__(self, proto=None, sequence_length=64, **kwargs):
        for flag in ("add_bos", "add_eos"):
            if kwargs.pop(flag, False):
                raise ValueError(
                    f"TIPSv2Tokenizer does not support {flag}=True: TIPS text "
                    "has neither a BOS nor an EOS token."
                )
        dtype = kwargs.get("dtype", "int32")
        if not is_int_dtype(dtype):
            raise ValueError(
                f"TIPSv2Tokenizer outputs integer ids; got dtype={dtype!r}."
            )
        super().__init__(proto=proto, sequence_length=sequence_length, **kwargs)

    def _lowercase(self, inputs):
        if self._use_tf_workflow():
            return tf.strings.lower(inputs)
        texts, batched = _python_texts(inputs)
        texts = [ascii_lower(text) for text in texts]
        return texts if batched else texts[0]

    def tokenize(self, inputs):
        """Lowercased ids: dense (B, sequence_length) padded with 0, or ragged
        lists if `sequence_length` is None. No padding mask (use `__call__`)."""
        self._check_vocabulary()
        return super().tokenize(self._lowercase(inputs))

    def call(self, inputs, sequence_length=None):
        self._check_vocabulary()
        sequence_length = sequence_length or self.sequence_length
        if not sequence_length:
            raise ValueError(
                "TIPSv2Tokenizer needs a `sequence_length` to pad to; set it "
                "on the layer or pass `sequence_length=` to the call."
            )
        if self._use_tf_workflow():
            return self._call_tf(inputs, sequence_length=sequence_length)
        return self._call_python(inputs, sequence_length)

    @preprocessing_function
    def _call_tf(self, inputs, sequence_length):
        self._maybe_initialized_tf()
        inputs = tf.convert_to_tensor(inputs)
        unbatched = inputs.shape.rank == 0
        if unbatched:
            inputs = tf.expand_dims(inputs, 0)
        ragged = self._sentence_piece.tokenize(tf.strings.lower(inputs))
        ragged = ragged[:, :sequence_length]
        outputs = {
            "token_ids": ragged.to_tensor(
                default_value=self.pad_token_id, shape=[None, sequence_length]
            ),
            "padding_mask": tf.sequence_mask(
                ragged.row_lengths(), sequence_length, dtype="int32"
            ),
        }
        if unbatched:
            outputs = {k: tf.squeeze(v, 0) for k, v in outputs.items()}
        return outputs

    def _call_python(self, inputs, sequence_length):
        self._maybe_initialized_spm()
        texts, batched = _python_texts(inputs)
        sequences = self._sentence_piece_spm.Encode(
            [ascii_lower(text) for text in texts], add_bos=False, add_eos=False
        )
        token_ids = np.full(
            (len(texts), sequence_length), self.pad_token_id, "int32"
        )
        padding_mask = np.zeros((len(texts), sequence_length), "int32")
        for row, ids in enumerate(sequences):
            ids = ids[:sequence_length]
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = 1
        outputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if not batched:
            outputs = {k: v[0] for k, v in outputs.items()}
        return convert_preprocessing_outputs_python(outputs)

    def detokenize(self, inputs):
        """Ids back to (lowercased) text. Also accepts the dict returned by
        calling the layer, whose `padding_mask` then says where each row ends."""
        if not isinstance(inputs, dict):
            return super().detokenize(inputs)
        if self._use_tf_workflow():
            mask = tf.cast(inputs["padding_mask"], "bool")
            return super().detokenize(
                tf.ragged.boolean_mask(inputs["token_ids"], mask)
            )
        token_ids = convert_to_numpy(inputs["token_ids"])
        mask = convert_to_numpy(inputs["padding_mask"]).astype(bool)
        if token_ids.ndim == 1:
            return super().detokenize(token_ids[mask].tolist())
        rows = [ids[keep].tolist() for ids, keep in zip(token_ids, mask)]
        return super().detokenize(rows)

    def compute_output_spec(self, input_spec):
        shape = tuple(input_spec.shape) + (self.sequence_length,)
        return {
            "token_ids": keras.KerasTensor(shape, dtype="int32"),
            "padding_mask": keras.KerasTensor(shape, dtype="int32"),
        }

    def get_config(self):
        config = super().get_config()
        # Always False; kept out so the config has only meaningful arguments.
        config.pop("add_bos", None)
        config.pop("add_eos", None)
        return config
