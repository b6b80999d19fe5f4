"""Builders of random-weight oracles and of official-layout files from them.

The oracle is transformers' `Tipsv2Model`, an implementation independent of
ours. Its state dict is rewritten into the official PyTorch and Scenic npz
layouts (the released checkpoints of google-deepmind/tips) so that every reader is checked against the
same numbers.
"""

import numpy as np
import torch
from transformers import Tipsv2Config, Tipsv2Model


def tiny_hf_model(seed=0, layout="hf", swiglu=False, image_size=448, vision=None, text=None, scale=0.3):
    """A tiny random Tipsv2Model whose weights are all far from their init.

    layout="scenic" keeps what the Scenic format cannot express at identity:
    LayerScale gammas at 1 and the CLS position entry at 0; it also uses
    tanh-GELU and text LayerNorm epsilon 1e-6, as the Scenic code does.
    """
    torch.manual_seed(seed)
    vision_config = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=3 if swiglu else 2,
        image_size=image_size,
        patch_size=14,
        use_swiglu_ffn=swiglu,
    )
    text_config = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        vocab_size=64,
        max_position_embeddings=16,
    )
    if layout == "scenic":
        vision_config["hidden_act"] = "gelu_pytorch_tanh"
        text_config["layer_norm_eps"] = 1e-6
    vision_config.update(vision or {})
    text_config.update(text or {})
    config = Tipsv2Config(vision_config=vision_config, text_config=text_config)
    return randomized(Tipsv2Model(config).eval(), layout, scale)


def randomized(model, layout="hf", scale=0.3):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "temperature":
                p.fill_(0.0123)
            elif layout == "scenic" and "lambda1" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn_like(p) * scale)
        if layout == "scenic":
            model.vision_model.embeddings.position_embeddings[:, 0] = 0.0
    return model


def state_numpy(model):
    return {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}


def _cat(*arrays):
    return np.concatenate(arrays, axis=0)


def to_official_pytorch(sd, num_vision_layers, num_text_layers):
    """(vision, text) dicts in the official PyTorch npz layout."""
    e = "vision_model.embeddings."
    v = {
        "cls_token": sd[e + "cls_token"],
        "register_tokens": sd[e + "register_tokens"],
        "pos_embed": sd[e + "position_embeddings"],
        "mask_token": sd[e + "mask_token"],
        "patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
        "norm.weight": sd["vision_model.layernorm.weight"],
        "norm.bias": sd["vision_model.layernorm.bias"],
    }
    for i in range(num_vision_layers):
        s, d = f"vision_model.encoder.layer.{i}.", f"blocks.{i}."
        for n in ("norm1", "norm2"):
            v[d + n + ".weight"], v[d + n + ".bias"] = sd[s + n + ".weight"], sd[s + n + ".bias"]
        for t in ("weight", "bias"):
            v[d + "attn.qkv." + t] = _cat(*(sd[s + f"attention.{p}_proj.{t}"] for p in "qkv"))
            v[d + "attn.proj." + t] = sd[s + "attention.o_proj." + t]
            if s + "mlp.gate_proj.weight" in sd:
                v[d + "mlp.w12." + t] = _cat(sd[s + "mlp.gate_proj." + t], sd[s + "mlp.up_proj." + t])
                v[d + "mlp.w3." + t] = sd[s + "mlp.down_proj." + t]
            else:
                v[d + "mlp.fc1." + t] = sd[s + "mlp.fc1." + t]
                v[d + "mlp.fc2." + t] = sd[s + "mlp.fc2." + t]
        v[d + "ls1.gamma"] = sd[s + "layer_scale1.lambda1"]
        v[d + "ls2.gamma"] = sd[s + "layer_scale2.lambda1"]
    t = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "temperature": np.asarray(sd["temperature"]),
    }
    for i in range(num_text_layers):
        s, d = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for src, dst in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")):
            t[d + dst + ".weight"], t[d + dst + ".bias"] = sd[s + src + ".weight"], sd[s + src + ".bias"]
        t[d + "attn.in_proj_weight"] = _cat(*(sd[s + f"self_attn.{p}_proj.weight"] for p in "qkv"))
        t[d + "attn.in_proj_bias"] = _cat(*(sd[s + f"self_attn.{p}_proj.bias"] for p in "qkv"))
    return v, t


def _scenic_attention(out, dst, sd, src, names, heads):
    q, k, vv, o = names
    width = sd[src + q + ".weight"].shape[1]
    hd = width // heads
    for flax, torch_name in (("query", q), ("key", k), ("value", vv)):
        out[dst + f"{flax}/kernel"] = sd[src + torch_name + ".weight"].T.reshape(width, heads, hd)
        out[dst + f"{flax}/bias"] = sd[src + torch_name + ".bias"].reshape(heads, hd)
    out[dst + "out/kernel"] = sd[src + o + ".weight"].T.reshape(heads, hd, width)
    out[dst + "out/bias"] = sd[src + o + ".bias"]


def _scenic_norm(out, dst, sd, src):
    out[dst + "scale"], out[dst + "bias"] = sd[src + ".weight"], sd[src + ".bias"]


def _scenic_dense(out, dst, sd, src):
    out[dst + "kernel"], out[dst + "bias"] = sd[src + ".weight"].T, sd[src + ".bias"]


def to_official_scenic(sd, num_vision_layers, num_text_layers, heads):
    """(vision, text) dicts in the official Scenic npz layout."""
    e, r = "vision_model.embeddings.", "encoder/ToTokenSequence_0/"
    pos = sd[e + "position_embeddings"][:, 1:]
    grid = int(round(np.sqrt(pos.shape[1])))
    v = {
        r + "embedding/kernel": sd[e + "patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
        r + "embedding/bias": sd[e + "patch_embeddings.projection.bias"],
        r + "posembed_input": pos.reshape(1, grid, grid, -1),
        r + "cls": _cat(sd[e + "cls_token"][0], sd[e + "register_tokens"][0])[None],
    }
    _scenic_norm(v, "encoder/encoder_norm/", sd, "vision_model.layernorm")
    for i in range(num_vision_layers):
        s, d = f"vision_model.encoder.layer.{i}.", f"encoder/transformer/encoderblock_{i}/"
        _scenic_norm(v, d + "LayerNorm_0/", sd, s + "norm1")
        _scenic_norm(v, d + "LayerNorm_1/", sd, s + "norm2")
        _scenic_attention(v, d + "MultiHeadDotProductAttention_0/", sd, s,
                          ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"), heads)
        if s + "mlp.gate_proj.weight" in sd:
            for j, n in enumerate(("gate_proj", "up_proj", "down_proj")):
                _scenic_dense(v, d + f"FFNSwiGluFused_0/Dense_{j}/", sd, s + "mlp." + n)
        else:
            _scenic_dense(v, d + "MlpBlock_0/Dense_0/", sd, s + "mlp.fc1")
            _scenic_dense(v, d + "MlpBlock_0/Dense_1/", sd, s + "mlp.fc2")
    t = {
        "token_emb/emb_var": sd["text_model.embeddings.token_embedding.weight"],
        "temperature_contrastive": np.asarray(sd["temperature"]),
    }
    _scenic_norm(t, "text_encoder_norm/", sd, "text_model.final_layer_norm")
    for i in range(num_text_layers):
        s, d = f"text_model.encoder.layers.{i}.", f"transformer/encoderblock_{i}/"
        _scenic_norm(t, d + "LayerNorm_0/", sd, s + "layer_norm1")
        _scenic_norm(t, d + "LayerNorm_1/", sd, s + "layer_norm2")
        _scenic_attention(t, d + "MultiHeadDotProductAttention_0/", sd, s,
                          ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"), heads)
        _scenic_dense(t, d + "MlpBlock_0/Dense_0/", sd, s + "mlp.fc1")
        _scenic_dense(t, d + "MlpBlock_0/Dense_1/", sd, s + "mlp.fc2")
    return v, t


def backbone_in_layout(model, layout):
    """Our backbone, read from `model`'s weights written in `layout`.

    layout: "hf" (the transformers state dict), "pytorch" or "scenic" (the
    official npz layouts, built here from the same weights).
    """
    from keras_tipsv2.convert import backbone_from_checkpoint, read_hf, read_official

    sd = state_numpy(model)
    v, t = model.config.vision_config, model.config.text_config
    if layout == "hf":
        return backbone_from_checkpoint(read_hf(model.config.to_dict(), sd))
    if layout == "pytorch":
        vision, text = to_official_pytorch(sd, v.num_hidden_layers, t.num_hidden_layers)
        # Tiny widths are not published TIPS widths: heads must be given.
        return backbone_from_checkpoint(read_official(vision, text, num_heads=v.num_attention_heads))
    vision, text = to_official_scenic(sd, v.num_hidden_layers, t.num_hidden_layers, v.num_attention_heads)
    return backbone_from_checkpoint(read_official(vision, text))


def hf_outputs(model, images, token_ids, padding_mask):
    """Reference outputs as numpy: cls (B,2,D), patches (B,h*w,D), text (B,D), t."""
    with torch.no_grad():
        seq = model.vision_model(
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2)
        ).last_hidden_state.numpy()
        text = model.text_model(
            input_ids=torch.from_numpy(token_ids).long(),
            attention_mask=torch.from_numpy(padding_mask),
        ).pooler_output.numpy()
    return seq[:, :2], seq[:, 2:], text, float(model.temperature.detach())
