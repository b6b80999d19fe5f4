"""Multi-granularity caption sampling, as the TIPSv2 paper trains its two CLS tokens.

CLS_1 is paired with the web alt-text; CLS_2 with a caption drawn per
example, uniformly, from the richer caption fields (a short and a long
synthetic caption, or COCO's pool of human captions), so every batch mixes
granularities and the model cannot shortcut on coarse keywords. The
"alt_text_only" mode is the TIPS-style baseline where CLS_2 also gets the
alt-text.

A raw example carries "alt_text" (a string scalar) and "captions" (a string
vector, "" where a field is missing).
"""

import tensorflow as tf

from keras_tipsv2.data.common import CAPTION_MODES  # noqa: F401  (re-exported)
from keras_tipsv2.data.common import check_caption_mode


def present(texts):
    """Boolean mask of the texts that are not empty or only whitespace."""
    return tf.strings.length(tf.strings.strip(texts)) > 0


def has_captions(example, caption_mode="multi"):
    """True when the example has every caption its mode needs.

    Args:
        example: raw example with "alt_text" and "captions".
        caption_mode: "multi" needs the alt-text and at least one richer
            caption; "alt_text_only" needs only the alt-text.
    """
    check_caption_mode(caption_mode)
    alt_ok = present(example["alt_text"])
    if caption_mode == "alt_text_only":
        return alt_ok
    return alt_ok & tf.reduce_any(present(example["captions"]))


def sample_caption(captions, seed):
    """Draws one non-empty caption uniformly; `seed` is a stateless seed pair.

    The example must have at least one non-empty caption (see `has_captions`).
    """
    pool = tf.boolean_mask(captions, present(captions))
    choice = tf.random.stateless_uniform(
        [], seed=seed, maxval=tf.shape(pool)[0], dtype=tf.int32
    )
    return pool[choice]


def caption_pair(example, seed, caption_mode="multi"):
    """Returns (text for CLS_1, text for CLS_2) of one example."""
    check_caption_mode(caption_mode)
    if caption_mode == "alt_text_only":
        return example["alt_text"], example["alt_text"]
    return example["alt_text"], sample_caption(example["captions"], seed)
