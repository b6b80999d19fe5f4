"""Writes a converted backbone (and tokenizer assets) as a KerasHub preset.

The preset is written into a temporary sibling directory and renamed into
place only when every file is written, so a failed conversion leaves no
half-written output directory behind.
"""

import os
import shutil
import tempfile


def write_preset(backbone, output, tokenizer_proto=None, image_size=448, overwrite=False):
    """Saves `backbone` (+ tokenizer and image converter) to `output`.

    Args:
        tokenizer_proto: SentencePiece model, a path or the model's bytes.
        image_size: side of the square images the converter produces: the
            published models' 448, or the resolution a model was trained at.
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
    output = os.path.abspath(output)
    if os.path.exists(output) and os.listdir(output):
        if not overwrite:
            raise FileExistsError(
                f"Output directory {output} exists and is not empty; choose "
                "another path or pass --overwrite."
            )
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tipsv2-preset-", dir=parent)
    try:
        # mkdtemp makes the folder private (0700); a preset is for sharing.
        os.chmod(staging, 0o777 & ~_umask())
        save(staging)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
