"""Writes a backbone (and tokenizer and image converter) as a KerasHub preset.

The preset is built in a hidden sibling folder and moved into place only
when every file is written (`atomic_files.replace_directory`): a failed or
killed write leaves the previous preset, or none, under the name, never a
half-written one, and an overwritten preset is deleted only after the new
one is in place.
"""

import os

from keras_tipsv2.utils import atomic_files


def write_preset(backbone, output, tokenizer_proto=None, image_size=448, overwrite=False):
    """Saves `backbone` (+ tokenizer and image converter) to the folder `output`.

    Args:
        backbone: a `TIPSv2Backbone`.
        output: the preset folder.
        tokenizer_proto: SentencePiece model, a path or the model's bytes.
        image_size: side of the square images the converter produces: the
            published models' 448, or the resolution a model was trained at.
        overwrite: replace an existing, non-empty `output`.

    Returns:
        `output` as an absolute path.

    Example:

    ```python
    write_preset(backbone, "presets/my_tipsv2", "tokenizer.model", image_size=224)
    ```
    """

    def save(staging):
        backbone.save_to_preset(staging)
        _save_preprocessing(
            staging, tokenizer_proto, image_size, backbone.text_max_sequence_length
        )

    return _write_atomically(save, output, overwrite)


def write_task_preset(task, output, overwrite=False):
    """Saves a task (its backbone and head weights) to `output`."""
    return _write_atomically(task.save_to_preset, output, overwrite)


def _write_atomically(save, output, overwrite):
    output = os.path.abspath(atomic_files.recover(output))
    if os.path.exists(output) and os.listdir(output) and not overwrite:
        raise FileExistsError(
            f"Output directory {output} exists and is not empty; choose "
            "another path or pass --overwrite."
        )
    return atomic_files.replace_directory(output, save)


def _save_preprocessing(directory, tokenizer_proto, image_size, sequence_length):
    from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter

    TIPSv2ImageConverter(image_size=(image_size, image_size)).save_to_preset(directory)
    if tokenizer_proto is not None:
        from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer

        if isinstance(tokenizer_proto, str) and not os.path.exists(tokenizer_proto):
            raise FileNotFoundError(f"Tokenizer model not found: {tokenizer_proto}")
        # Padded to the text tower's length, which small models shorten.
        TIPSv2Tokenizer(proto=tokenizer_proto, sequence_length=sequence_length).save_to_preset(
            directory
        )
