"""Assigns a canonical `Checkpoint` to a `TIPSv2Backbone`, checking every key."""

import math

import numpy as np

from keras_tipsv2.convert.checkpoint import CheckpointError
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone

# Canonical names that a layout may lack; the model keeps its initial value.
# (The Scenic files have no mask token: it only matters for iBOT training.)
OPTIONAL_NAMES = {"vision/mask_token"}


def _dense(prefix, layer):
    return {f"{prefix}/kernel": layer.kernel, f"{prefix}/bias": layer.bias}


def _norm(prefix, layer):
    return {f"{prefix}/gamma": layer.gamma, f"{prefix}/beta": layer.beta}


def backbone_variable_map(backbone):
    """Canonical name -> variable, for every weight of the backbone."""
    vision = backbone.vision_encoder
    emb = vision.embedding
    out = {
        "vision/cls_tokens": emb.cls_tokens,
        "vision/position_embedding": emb.position_embedding,
        "vision/mask_token": emb.mask_token,
        "vision/patch/kernel": emb.patch_projection.kernel,
        "vision/patch/bias": emb.patch_projection.bias,
    }
    for i, block in enumerate(vision.blocks):
        p = f"vision/block_{i}"
        out.update(_norm(f"{p}/norm1", block.norm1))
        out.update(_dense(f"{p}/attn/qkv", block.attention.qkv))
        out.update(_dense(f"{p}/attn/proj", block.attention.proj))
        out.update(_norm(f"{p}/norm2", block.norm2))
        out.update(_dense(f"{p}/mlp/fc1", block.mlp.fc1))
        out.update(_dense(f"{p}/mlp/fc2", block.mlp.fc2))
        if block.layer_scale:
            out[f"{p}/ls1/gamma"] = block.ls1.gamma
            out[f"{p}/ls2/gamma"] = block.ls2.gamma
    out.update(_norm("vision/norm", vision.norm))
    text = backbone.text_encoder
    out["text/token_embedding"] = text.embedding.token_embedding.embeddings
    for i, block in enumerate(text.blocks):
        p = f"text/block_{i}"
        out.update(_norm(f"{p}/norm1", block.norm1))
        out.update(_dense(f"{p}/attn/qkv", block.attention.qkv))
        out.update(_dense(f"{p}/attn/proj", block.attention.proj))
        out.update(_norm(f"{p}/norm2", block.norm2))
        out.update(_dense(f"{p}/fc1", block.fc1))
        out.update(_dense(f"{p}/fc2", block.fc2))
    out.update(_norm("text/norm", text.norm))
    out["log_temperature"] = backbone.contrastive_temperature.log_temperature
    return out


def load_checkpoint(backbone, checkpoint):
    """Assigns every canonical array of `checkpoint` to `backbone`.

    Raises `CheckpointError` naming the source key and both shapes on any
    mismatch, listing keys the model has no place for, and naming any
    array that cannot be read or holds NaN or infinite values.
    """
    variables = backbone_variable_map(backbone)
    extra = sorted(set(checkpoint.names()) - set(variables))
    if extra:
        raise CheckpointError(
            f"{checkpoint.source}: no place in the model for "
            + ", ".join(f"'{checkpoint.source_key(n)}'" for n in extra)
        )
    for name, variable in variables.items():
        if name not in checkpoint:
            if name in OPTIONAL_NAMES:
                continue
            raise CheckpointError(
                f"{checkpoint.source}: missing weight for '{name}' "
                f"(model shape {tuple(variable.shape)})."
            )
        array = _finite_array(checkpoint, name)
        if tuple(array.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{checkpoint.source}: key '{checkpoint.source_key(name)}' has "
                f"shape {tuple(array.shape)} after conversion, but the model's "
                f"'{name}' has shape {tuple(variable.shape)}."
            )
        variable.assign(array.astype(variable.dtype))


def _finite_array(checkpoint, name):
    """The array of `name`, refused if unreadable or not finite."""
    try:
        array = checkpoint.array(name)
    except CheckpointError:
        raise
    except Exception as e:  # a damaged file fails only when the array is read
        raise CheckpointError(
            f"{checkpoint.source}: could not read '{checkpoint.source_key(name)}' "
            f"(damaged or truncated file?): {e}"
        ) from e
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise CheckpointError(
            f"{checkpoint.source}: '{checkpoint.source_key(name)}' holds {bad} NaN "
            "or infinite value(s); the checkpoint is damaged or diverged."
        )
    return array


def backbone_from_checkpoint(checkpoint, dtype=None, **overrides):
    """Builds a backbone from the checkpoint's inferred config and loads it."""
    config = dict(checkpoint.config)
    config.update(overrides)
    backbone = TIPSv2Backbone(dtype=dtype, **config)
    load_checkpoint(backbone, checkpoint)
    return backbone


def temperature_to_log(value):
    value = float(np.asarray(value))
    if not value > 0:
        raise CheckpointError(f"temperature must be positive; got {value}.")
    return np.asarray(math.log(value), dtype="float32")
