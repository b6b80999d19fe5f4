"""Reader for Hugging Face `transformers` TIPSv2 checkpoints.

A checkpoint directory holds `config.json` (model_type "tipsv2") and
`model.safetensors` (or shards listed by `model.safetensors.index.json`).
The state dict uses `vision_model.` / `text_model.` keys as in
`transformers.Tipsv2Model`; files whose keys are the official PyTorch names
prefixed with `vision_encoder.` / `text_encoder.` are read too.
"""

import json
import os

from keras_tipsv2.convert import torch_layouts
from keras_tipsv2.convert.checkpoint import Checkpoint, CheckpointError, KeyReader
from keras_tipsv2.convert.loading import backbone_from_checkpoint

TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_tanh")

# Buffers transformers may save that carry no learned value.
IGNORED_KEYS = ("text_model.embeddings.position_ids",)


class _Prefixed:
    """A view of `arrays` restricted to keys under `prefix`, prefix removed.

    Keys in `passthrough` are visible under their own name (the hub files
    keep `temperature` outside both towers).
    """

    def __init__(self, arrays, prefix, passthrough=()):
        self._arrays = arrays
        self._names = {k[len(prefix):]: k for k in arrays.keys() if k.startswith(prefix)}
        self._names.update({k: k for k in passthrough if k in arrays})

    def keys(self):
        return list(self._names)

    def __contains__(self, key):
        return key in self._names

    def __getitem__(self, key):
        return self._arrays[self._names[key]]


# The files on the Hugging Face hub keep the official PyTorch names under
# `vision_encoder.` / `text_encoder.`, except the vision MLP, which is named
# like the text one (transformers' conversion_mapping for "tipsv2").
HUB = dict(torch_layouts.OFFICIAL, name="Hugging Face hub", fc1="mlp.c_fc", fc2="mlp.c_proj")


def _activation(name):
    if name == "gelu":
        return "gelu"
    if name in TANH_GELUS:
        return "gelu_tanh"
    raise CheckpointError(f"Unsupported vision hidden_act {name!r} in config.json.")


def read_hf(config, arrays, source="Hugging Face checkpoint"):
    """A `Checkpoint` from a transformers config dict and a key -> array mapping."""
    if config.get("model_type") not in ("tipsv2", None):
        raise CheckpointError(
            f"{source}: config.json has model_type {config.get('model_type')!r}, not 'tipsv2'."
        )
    vision_cfg = config.get("vision_config") or {}
    text_cfg = config.get("text_config") or {}
    keys = list(arrays.keys())
    ckpt = Checkpoint(source, {})
    if any(k.startswith("vision_encoder.") for k in keys):
        vision = KeyReader(_Prefixed(arrays, "vision_encoder."), f"{source} vision_encoder")
        text = KeyReader(
            _Prefixed(arrays, "text_encoder.", passthrough=("temperature",)), f"{source} text_encoder"
        )
        layout = HUB
        extra = [
            k for k in keys
            if not k.startswith(("vision_encoder.", "text_encoder.")) and k != "temperature"
        ]
    else:
        # One state dict holds both towers: one reader checks all its keys.
        vision = text = KeyReader(arrays, source, ignored=IGNORED_KEYS)
        layout = torch_layouts.HUGGING_FACE
        extra = []
    if extra:
        raise CheckpointError(f"{source}: unexpected key(s) {extra[:5]}.")
    cfg = torch_layouts.add_vision(
        ckpt,
        vision,
        layout,
        num_heads=vision_cfg.get("num_attention_heads"),
        gelu=_activation(vision_cfg.get("hidden_act", "gelu")),
    )
    cfg.update(
        torch_layouts.add_text(ckpt, text, layout, num_heads=text_cfg.get("num_attention_heads"))
    )
    cfg["vision_layer_norm_epsilon"] = float(vision_cfg.get("layer_norm_eps", 1e-6))
    cfg["text_layer_norm_epsilon"] = float(text_cfg.get("layer_norm_eps", 1e-5))
    cfg["text_max_sequence_length"] = int(text_cfg.get("max_position_embeddings", 64))
    vision.finish()
    if text is not vision:
        text.finish()
    ckpt.config = cfg
    return ckpt


def open_safetensors(directory):
    """Lazy key -> array mapping over model.safetensors (or its shards)."""
    from safetensors import safe_open

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e!r}") from e
    else:
        files = ["model.safetensors"]
    handles = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Missing weights file {path}.")
        try:
            handle = safe_open(path, framework="np")
        except Exception as e:  # safetensors' own errors name no file
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated or damaged?): {e}"
            ) from e
        for key in handle.keys():
            handles[key] = handle
    return _LazyTensors(handles)


class _LazyTensors:
    def __init__(self, handles):
        self._handles = handles

    def keys(self):
        return list(self._handles)

    def __contains__(self, key):
        return key in self._handles

    def __getitem__(self, key):
        return self._handles[key].get_tensor(key)


def read_hf_dir(directory):
    """A `Checkpoint` from a local transformers TIPSv2 checkpoint directory."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"No config.json in {directory}.")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
    return read_hf(config, open_safetensors(directory), source=directory)


def backbone_from_hf(config, state_dict, dtype=None, **overrides):
    """A loaded `TIPSv2Backbone` from a transformers config dict and state dict.

    `state_dict` values may be numpy arrays or CPU torch tensors. Keyword
    arguments override the backbone config read from `config` (e.g.
    `dtype`, `image_shape`).
    """
    arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
    return backbone_from_checkpoint(read_hf(config, arrays), dtype=dtype, **overrides)


def _to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().float().numpy()
    return value
