"""Checks that a Keras `.weights.h5` file fits a model before it is loaded.

Keras reads such a file by walking the model: arrays the model has no
place for are skipped without a word (a config.json that lost
`vision_layer_scale` would load and silently drop every LayerScale gamma),
and a truncated file fails inside h5py with a message that names no file.
"""

import h5py
import numpy as np

# Top-level groups that hold training state, not the model's weights: a
# compiled model's save_weights writes its optimizer's variables there.
TRAINING_STATE_GROUPS = ("optimizer",)


def saved_arrays(path):
    """{dataset path: shape} of every weight array in a `.weights.h5` file."""
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(
            f"{path} is not a readable Keras weights file (truncated, empty or "
            f"not HDF5): {e}"
        ) from e
    arrays = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and name.split("/")[0] not in TRAINING_STATE_GROUPS:
            arrays[name] = tuple(item.shape)

    with handle:
        try:
            handle.visititems(visit)
        except (OSError, RuntimeError, KeyError) as e:
            raise ValueError(f"{path} is damaged (truncated?): {e}") from e
    return arrays


def _arrays_without_a_layer(arrays, variables):
    """Saved arrays whose layer (the group above "vars/i") is named in no
    variable path of the model: a good guess at the ones left out. (Groups
    of list items are named after the layer's class, so only the last
    group name can be compared.)"""
    names = {part for v in variables for part in v.path.split("/")}
    return sorted(
        name for name in arrays if len(name.split("/")) >= 3 and name.split("/")[-3] not in names
    )


def check_weights_file(path, variables, what):
    """Raises ValueError naming `path` unless it holds exactly `variables`.

    The count and the total size of the saved arrays must equal those of
    the model's (unique) variables; Keras then checks each shape as it
    assigns.

    Args:
        path: a Keras `.weights.h5` file.
        variables: the model's variables that the file should fill.
        what: how the message names the model, e.g. "the backbone built from
            config.json".
    """
    arrays = saved_arrays(path)
    unique = list({id(v): v for v in variables}.values())
    saved_values = sum(int(np.prod(shape)) for shape in arrays.values())
    model_values = sum(int(np.prod(v.shape)) for v in unique)
    if len(arrays) == len(unique) and saved_values == model_values:
        return
    message = (
        f"{path} holds {len(arrays)} weight arrays ({saved_values:,} values) but "
        f"{what} has {len(unique)} ({model_values:,} values), so loading would "
        "leave weights out."
    )
    if len(arrays) > len(unique):
        extra = _arrays_without_a_layer(arrays, unique)
        if extra:
            shown = ", ".join(extra[:4]) + (f" and {len(extra) - 4} more" if len(extra) > 4 else "")
            message += f" No place in the model for: {shown}."
    message += (
        " The config does not describe the saved model: a field is missing or "
        "wrong (a width, a count, or for LayerScale gammas vision_layer_scale: true)."
    )
    raise ValueError(message)
