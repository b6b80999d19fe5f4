"""Readers for the two PyTorch-style layouts: the official npz and Hugging Face.

Both store Linear weights as (out, in) and patch convolutions as OIHW, and
both use the DINOv2 token layout (CLS + one "register" token = CLS_2, a
position table with a CLS entry). They differ in key names and in whether
q/k/v are fused; one table per layout captures that.
"""

import math

import numpy as np

from keras_tipsv2.convert.checkpoint import (
    CheckpointError,
    block_count,
    heads_for_width,
)
from keras_tipsv2.convert.loading import temperature_to_log

OFFICIAL = {
    "name": "official PyTorch",
    "cls": "cls_token",
    "cls2": "register_tokens",
    "pos": "pos_embed",
    "mask": "mask_token",
    "patch": "patch_embed.proj",
    "block": "blocks.{}.",
    "norm1": "norm1",
    "qkv": "attn.qkv",
    "proj": "attn.proj",
    "ls1": "ls1.gamma",
    "norm2": "norm2",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "swiglu_in": "mlp.w12",
    "swiglu_out": "mlp.w3",
    "ls2": "ls2.gamma",
    "norm": "norm",
    "text_embedding": "token_embedding.weight",
    "text_block": "transformer.resblocks.{}.",
    "text_norm1": "ln_1",
    "text_qkv": "attn.in_proj",
    "text_proj": "attn.out_proj",
    "text_norm2": "ln_2",
    "text_fc1": "mlp.c_fc",
    "text_fc2": "mlp.c_proj",
    "text_norm": "ln_final",
    "temperature": ("temperature", "temperature_contrastive"),
}

HUGGING_FACE = {
    "name": "Hugging Face",
    "cls": "vision_model.embeddings.cls_token",
    "cls2": "vision_model.embeddings.register_tokens",
    "pos": "vision_model.embeddings.position_embeddings",
    "mask": "vision_model.embeddings.mask_token",
    "patch": "vision_model.embeddings.patch_embeddings.projection",
    "block": "vision_model.encoder.layer.{}.",
    "norm1": "norm1",
    "qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    "proj": "attention.o_proj",
    "ls1": "layer_scale1.lambda1",
    "norm2": "norm2",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "swiglu_in": ("mlp.gate_proj", "mlp.up_proj"),
    "swiglu_out": "mlp.down_proj",
    "ls2": "layer_scale2.lambda1",
    "norm": "vision_model.layernorm",
    "text_embedding": "text_model.embeddings.token_embedding.weight",
    "text_block": "text_model.encoder.layers.{}.",
    "text_norm1": "layer_norm1",
    "text_qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "text_proj": "self_attn.out_proj",
    "text_norm2": "layer_norm2",
    "text_fc1": "mlp.fc1",
    "text_fc2": "mlp.fc2",
    "text_norm": "text_model.final_layer_norm",
    "temperature": ("temperature",),
}


def _linear(reader, names, suffix_w="weight", suffix_b="bias"):
    """Lazy (kernel, bias) of one Linear or of several concatenated on output.

    Official files fuse q/k/v as one `.weight` of shape (3D, D) (or
    `in_proj_weight` in the text tower); Hugging Face keeps three Linears.
    Either way our fused kernel is (D, 3D) with columns [q | k | v].
    """
    if isinstance(names, str):
        names = (names,)
    if len(names) == 1 and names[0].endswith("in_proj"):
        w_keys, b_keys = [names[0] + "_weight"], [names[0] + "_bias"]
    else:
        w_keys = [f"{n}.{suffix_w}" for n in names]
        b_keys = [f"{n}.{suffix_b}" for n in names]
    weights = [reader.lazy(k) for k in w_keys]
    biases = [reader.lazy(k) for k in b_keys]
    kernel = lambda: np.concatenate([w() for w in weights], axis=0).T
    bias = lambda: np.concatenate([b() for b in biases], axis=0)
    return kernel, bias


def _add_linear(ckpt, name, reader, names, source_key):
    kernel, bias = _linear(reader, names)
    ckpt.add(f"{name}/kernel", source_key, kernel)
    ckpt.add(f"{name}/bias", source_key, bias)


def _add_norm(ckpt, name, reader, key):
    ckpt.add(f"{name}/gamma", f"{key}.weight", reader.lazy(f"{key}.weight"))
    ckpt.add(f"{name}/beta", f"{key}.bias", reader.lazy(f"{key}.bias"))


def _first(names):
    return names if isinstance(names, str) else names[0]


def add_vision(ckpt, reader, layout, num_heads=None, gelu="gelu"):
    """Adds the image tower and returns its inferred config."""
    L = layout
    patch_w = reader.get(f"{L['patch']}.weight")
    width = patch_w.shape[0]
    patch_size = patch_w.shape[-1]
    depth = block_count(reader.keys(), L["block"] + L["norm1"] + ".weight")
    if depth == 0:
        raise CheckpointError(f"{ckpt.source}: no vision blocks found.")
    pos_shape = reader.shape(L["pos"])
    grid = int(round(math.sqrt(pos_shape[1] - 1)))
    if grid * grid != pos_shape[1] - 1:
        raise CheckpointError(
            f"{ckpt.source}: key '{L['pos']}' has shape {pos_shape}; expected "
            "(1, 1 + G*G, D) for a square G x G grid."
        )
    if reader.shape(L["cls2"])[1] != 1:
        raise CheckpointError(
            f"{ckpt.source}: key '{L['cls2']}' has shape {reader.shape(L['cls2'])}; "
            "TIPS has exactly one register token (CLS_2)."
        )

    # CLS_1 gets the table's CLS entry folded in (exact: it is never resized),
    # CLS_2 gets none, as in the reference.
    cls, cls2, pos = reader.lazy(L["cls"]), reader.lazy(L["cls2"]), reader.lazy(L["pos"])
    ckpt.add(
        "vision/cls_tokens",
        L["cls"],
        lambda: np.concatenate([cls() + pos()[:, :1], cls2()], axis=1),
    )
    ckpt.add(
        "vision/position_embedding",
        L["pos"],
        lambda: pos()[:, 1:].reshape(1, grid, grid, width),
    )
    if reader.has(L["mask"]):
        mask = reader.lazy(L["mask"])
        ckpt.add("vision/mask_token", L["mask"], lambda: mask().reshape(1, 1, width))
    ckpt.add("vision/patch/kernel", f"{L['patch']}.weight", lambda: patch_w.transpose(2, 3, 1, 0))
    ckpt.add("vision/patch/bias", f"{L['patch']}.bias", reader.lazy(f"{L['patch']}.bias"))

    swiglu = reader.has(L["block"].format(0) + _first(L["swiglu_in"]) + ".weight")
    # LayerScale is kept only when it is not the identity; the released
    # weights were trained without it (Scenic has none), so gammas are ones.
    gammas = [
        reader.get(L["block"].format(i) + L[k]) for i in range(depth) for k in ("ls1", "ls2")
        if reader.has(L["block"].format(i) + L[k])
    ]
    layer_scale = any(not np.all(g == 1.0) for g in gammas)
    for i in range(depth):
        src = L["block"].format(i)
        dst = f"vision/block_{i}"
        _add_norm(ckpt, f"{dst}/norm1", reader, src + L["norm1"])
        qkv = L["qkv"]
        qkv = src + qkv if isinstance(qkv, str) else tuple(src + n for n in qkv)
        _add_linear(ckpt, f"{dst}/attn/qkv", reader, qkv, _first(qkv))
        _add_linear(ckpt, f"{dst}/attn/proj", reader, src + L["proj"], src + L["proj"])
        _add_norm(ckpt, f"{dst}/norm2", reader, src + L["norm2"])
        if swiglu:
            fc1 = L["swiglu_in"]
            fc1 = src + fc1 if isinstance(fc1, str) else tuple(src + n for n in fc1)
            fc2 = src + L["swiglu_out"]
        else:
            fc1, fc2 = src + L["fc1"], src + L["fc2"]
        _add_linear(ckpt, f"{dst}/mlp/fc1", reader, fc1, _first(fc1))
        _add_linear(ckpt, f"{dst}/mlp/fc2", reader, fc2, fc2)
        if layer_scale:
            ckpt.add(f"{dst}/ls1/gamma", src + L["ls1"], reader.lazy(src + L["ls1"]))
            ckpt.add(f"{dst}/ls2/gamma", src + L["ls2"], reader.lazy(src + L["ls2"]))
    _add_norm(ckpt, "vision/norm", reader, L["norm"])

    fc1_key = L["block"].format(0) + (_first(L["swiglu_in"]) if swiglu else L["fc1"])
    hidden = reader.shape(fc1_key + ".weight")[0]
    if swiglu and isinstance(L["swiglu_in"], str):
        hidden //= 2  # w12 packs gate and value branches
    return dict(
        vision_patch_size=int(patch_size),
        vision_hidden_dim=int(width),
        vision_num_layers=int(depth),
        vision_num_heads=heads_for_width(width, num_heads),
        vision_intermediate_dim=int(hidden),
        vision_mlp_activation="swiglu" if swiglu else gelu,
        vision_position_grid=(grid, grid),
        vision_layer_scale=bool(layer_scale),
    )


def add_text(ckpt, reader, layout, num_heads=None):
    """Adds the text tower and temperature and returns their config."""
    L = layout
    vocab, width = reader.shape(L["text_embedding"])
    depth = block_count(reader.keys(), L["text_block"] + L["text_norm1"] + ".weight")
    if depth == 0:
        raise CheckpointError(f"{ckpt.source}: no text blocks found.")
    ckpt.add("text/token_embedding", L["text_embedding"], reader.lazy(L["text_embedding"]))
    for i in range(depth):
        src = L["text_block"].format(i)
        dst = f"text/block_{i}"
        _add_norm(ckpt, f"{dst}/norm1", reader, src + L["text_norm1"])
        qkv = L["text_qkv"]
        qkv = src + qkv if isinstance(qkv, str) else tuple(src + n for n in qkv)
        _add_linear(ckpt, f"{dst}/attn/qkv", reader, qkv, _first(qkv))
        _add_linear(ckpt, f"{dst}/attn/proj", reader, src + L["text_proj"], src + L["text_proj"])
        _add_norm(ckpt, f"{dst}/norm2", reader, src + L["text_norm2"])
        _add_linear(ckpt, f"{dst}/fc1", reader, src + L["text_fc1"], src + L["text_fc1"])
        _add_linear(ckpt, f"{dst}/fc2", reader, src + L["text_fc2"], src + L["text_fc2"])
    _add_norm(ckpt, "text/norm", reader, L["text_norm"])
    temperature_keys = [k for k in L["temperature"] if reader.has(k)]
    if not temperature_keys:
        raise CheckpointError(
            f"{ckpt.source}: missing key '{L['temperature'][0]}' (the contrastive temperature)."
        )
    for extra in temperature_keys[1:]:
        reader.get(extra)  # both names present: the first wins, the rest are read
    value = reader.get(temperature_keys[0])
    ckpt.add("log_temperature", temperature_keys[0], lambda: temperature_to_log(value))
    hidden = reader.shape(L["text_block"].format(0) + L["text_fc1"] + ".weight")[0]
    return dict(
        text_vocabulary_size=int(vocab),
        text_hidden_dim=int(width),
        text_num_layers=int(depth),
        text_num_heads=heads_for_width(width, num_heads),
        text_intermediate_dim=int(hidden),
    )
