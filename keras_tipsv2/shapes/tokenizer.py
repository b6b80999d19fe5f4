"""A SentencePiece vocabulary for ShapesWorld, trained in memory in seconds.

No published TIPS tokenizer can be downloaded offline, and its 32k pieces
would be mostly unused on a world of a hundred or so words anyway. This one
is trained on what a ShapesWorld model ever reads: the captions of all three
granularities and the zero-shot prompts (TCL and CLIP templates filled with
every class name of every vocabulary). It follows the TIPS conventions
(google-deepmind/tips, `pytorch/text_encoder.py`): pad id 0, unk id 1, no BOS / EOS, lowercase
text, so it drops into `TIPSv2Tokenizer(proto=...)` unchanged.
"""

import io

import sentencepiece as spm

from keras_tipsv2.shapes.world import VOCABULARIES
from keras_tipsv2.shapes.world import class_names
from keras_tipsv2.models.prompt_templates import CLIP_IMAGENET_TEMPLATES
from keras_tipsv2.models.prompt_templates import TCL_TEMPLATES
from keras_tipsv2.models.prompt_templates import fill_templates
from keras_tipsv2.models.tipsv2_tokenizer import ascii_lower

CAPTION_FIELDS = ("alt_text", "caption_short", "caption_long")
# Below this the learned merges cannot even cover ShapesWorld's characters
# plus the two special pieces; SentencePiece's own error is cryptic.
MIN_VOCABULARY_SIZE = 48


def shapes_corpus(world, num_samples):
    """The training sentences: every caption of samples 0 .. num_samples - 1,
    then every template filled with every class name, ASCII-lowercased as the
    tokenizer will see them."""
    texts = []
    for index in range(num_samples):
        sample = world.sample(index)
        texts.extend(sample[field] for field in CAPTION_FIELDS)
    names = sorted({name for v in VOCABULARIES for name in class_names(v)})
    texts.extend(fill_templates(names, TCL_TEMPLATES + CLIP_IMAGENET_TEMPLATES))
    return [ascii_lower(text) for text in texts]


def train_shapes_tokenizer(world, num_samples=2000, vocab_size=256):
    """Trains a BPE SentencePiece model on ShapesWorld text; returns its bytes.

    Deterministic: the same world, `num_samples` and `vocab_size` give the
    same bytes (one training thread, no sentence sampling). About 3 ms per
    sample at 112 px (the images are rendered to get their captions), well
    under a second for SentencePiece itself. With the default 256 pieces
    every ShapesWorld word is one piece.

    Args:
        world: a `ShapesWorld`, normally the training split.
        num_samples: captions of samples 0 .. num_samples - 1 are used.
        vocab_size: number of pieces, special ones included; between 48 and
            about 750 (SentencePiece refuses more pieces than the text
            supports). The backbone's `text_vocabulary_size` must be at least
            this.

    Returns:
        The serialized model, for `TIPSv2Tokenizer(proto=..., sequence_length=...)`.

    Example:
    ```python
    proto = train_shapes_tokenizer(ShapesWorld(split="train"))
    tokenizer = TIPSv2Tokenizer(proto=proto, sequence_length=32)
    ```
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}.")
    if vocab_size < MIN_VOCABULARY_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCABULARY_SIZE} to hold the "
            f"characters of ShapesWorld text; got {vocab_size}."
        )
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(shapes_corpus(world, num_samples)),
        model_writer=buffer,
        vocab_size=vocab_size,
        # BPE over whitespace-split words: frequent words become whole pieces,
        # which keeps class names one or two tokens long.
        model_type="bpe",
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        character_coverage=1.0,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,  # one thread keeps training deterministic
        minloglevel=2,
    )
    return buffer.getvalue()
