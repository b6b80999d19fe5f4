"""A tiny, deterministic SentencePiece model for tests (no downloads).

`train_tiny_spm(tmp_dir)` writes `tiny.model` into `tmp_dir` and returns its
path. The ids follow the TIPS convention: pad 0, unk 1, no BOS/EOS. The model
is trained once per process and cached, so every test gets identical bytes.
"""

import functools
import io
import os

import sentencepiece as spm

# Words of the prompt templates plus a few lowercase non-ASCII words, so that
# lowercase "école" has pieces of its own while "É" stays unknown: that is
# what tells ASCII-only lowercasing apart from Python's str.lower().
_WORDS = (
    "a photo of the cat dog bird car house tree small large many bad origami "
    "art video game itap in on with école straße café naïve über garçon "
    "résumé city street school river sky"
).split()


def _corpus():
    # 400 fixed pseudo-sentences; the strides make word order vary.
    n = len(_WORDS)
    return [
        " ".join(_WORDS[(i * 7 + k * 13) % n] for k in range(6)) + "."
        for i in range(400)
    ]


@functools.lru_cache(maxsize=None)
def tiny_spm_bytes(byte_fallback=False):
    """The serialized model: BPE, 150 pieces (330 with byte fallback)."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buffer,
        # Byte fallback needs 256 byte pieces on top of the learned ones.
        vocab_size=330 if byte_fallback else 150,
        model_type="bpe",
        byte_fallback=byte_fallback,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        character_coverage=1.0,
        num_threads=1,  # one thread keeps training deterministic
        minloglevel=2,
    )
    return buffer.getvalue()


def train_tiny_spm(tmp_dir, byte_fallback=False):
    """Writes the tiny model to `tmp_dir/tiny.model` and returns that path.

    Args:
        tmp_dir: a directory (str or pathlib.Path), e.g. pytest's `tmp_path`.
        byte_fallback: if True, unknown characters become UTF-8 byte pieces
            instead of the unk id (the form Hugging Face's BPE conversion
            assumes).
    """
    name = "tiny_byte_fallback.model" if byte_fallback else "tiny.model"
    path = os.path.join(str(tmp_dir), name)
    with open(path, "wb") as f:
        f.write(tiny_spm_bytes(byte_fallback))
    return path
