"""Resolves presets that are checkpoints to convert rather than KerasHub presets."""

import json
import os

from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS, get_file

NPZ_SCHEME = "tips-npz://"

OFFLINE_HINT = (
    "This machine could not fetch it (no network access?). To use local files "
    "instead, convert them once:\n"
    "  python -m keras_tipsv2.convert --vision V.npz --text T.npz "
    "--tokenizer tokenizer.model --output DIR\n"
    "  python -m keras_tipsv2.convert --hf HF_CHECKPOINT_DIR --output DIR\n"
    "then call TIPSv2Backbone.from_preset(DIR)."
)


def _handle(preset):
    if preset in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[preset]["kaggle_handle"]
    return preset


def _fetch(fetch, what, preset, remote=True):
    try:
        return fetch()
    except ValueError:
        raise
    except FileNotFoundError as e:
        if not remote:
            raise
        # KerasHub reports an unreachable hub as a missing file.
        raise FileNotFoundError(f"Could not fetch {what} for preset {preset!r}: {e}\n{OFFLINE_HINT}") from e
    except Exception as e:  # connection errors of huggingface_hub / urllib
        raise ConnectionError(f"Could not fetch {what} for preset {preset!r}: {e}\n{OFFLINE_HINT}") from e


def checkpoint_for(preset):
    """A `Checkpoint` when `preset` names an official or transformers checkpoint.

    Returns None for a native KerasHub preset, which the base class loads.
    """
    handle = _handle(preset)
    if not isinstance(handle, str):
        return None
    if handle.startswith(NPZ_SCHEME):
        return _official_npz(handle[len(NPZ_SCHEME):], preset)
    if not (handle.startswith("hf://") or os.path.isdir(handle)):
        return None
    remote = handle.startswith("hf://")
    config_path = _fetch(lambda: get_file(handle, "config.json"), "config.json", preset, remote)
    with open(config_path) as f:
        config = json.load(f)
    if config.get("model_type") != "tipsv2":
        return None
    from keras_tipsv2.convert.hf import read_hf_dir

    weights = _fetch(
        lambda: get_file(handle, "model.safetensors"), "model.safetensors", preset, remote
    )
    return read_hf_dir(os.path.dirname(weights))


def _official_npz(prefix, preset):
    import keras

    from keras_tipsv2.convert.official import load_npz, read_official

    paths = []
    for tower in ("vision", "text"):
        url = f"{prefix}_{tower}.npz"
        if os.path.exists(url):
            paths.append(url)
            continue
        paths.append(
            _fetch(lambda u=url: keras.utils.get_file(origin=u, cache_subdir="tipsv2"), url, preset)
        )
    return read_official(load_npz(paths[0]), load_npz(paths[1]), source=os.path.basename(prefix))
