"""What the tf.data pipeline and `ShapesWorldBatches` share: augmentation
defaults, caption modes and the tokenizer's output contract.

It imports no TensorFlow, so the TensorFlow-free source can use it.
"""

import numpy as np

GLOBAL_CROP_SCALE = (0.4, 1.0)
LOCAL_CROP_SCALE = (0.05, 0.4)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
CAPTION_MODES = ("multi", "alt_text_only")


def check_caption_mode(caption_mode):
    if caption_mode not in CAPTION_MODES:
        raise ValueError(
            f"Unknown caption_mode {caption_mode!r}; expected one of {CAPTION_MODES}."
        )


def check_tokenizer_output(output):
    """Raises unless a tokenizer returned {"token_ids", "padding_mask", ...}."""
    if not isinstance(output, dict) or not {"token_ids", "padding_mask"} <= set(output):
        raise ValueError(
            "tokenizer must return a dict with 'token_ids' and 'padding_mask'; "
            f"got {output!r}."
        )


def check_positive(**values):
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a positive integer; got {value!r}.")
