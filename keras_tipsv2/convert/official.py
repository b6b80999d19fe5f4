"""Readers for the official TIPS / TIPSv2 npz files (PyTorch and Scenic layouts).

The layout is detected from the keys: the PyTorch files have `cls_token` /
`token_embedding.weight`, the Scenic ones `encoder/ToTokenSequence_0/...` /
`token_emb/emb_var`. Key names and shapes: the released checkpoints of
google-deepmind/tips (`pytorch/`, `scenic/`).
"""

import numpy as np

from keras_tipsv2.convert import torch_layouts
from keras_tipsv2.convert.checkpoint import (
    Checkpoint,
    CheckpointError,
    KeyReader,
    block_count,
)
from keras_tipsv2.convert.loading import temperature_to_log

SCENIC_EMBED = "encoder/ToTokenSequence_0/"
SCENIC_VISION_BLOCK = "encoder/transformer/encoderblock_{}/"
SCENIC_TEXT_BLOCK = "transformer/encoderblock_{}/"


def detect_layout(vision_keys, text_keys):
    """"pytorch" or "scenic", from the keys of the two files."""
    vision_keys, text_keys = set(vision_keys), set(text_keys)
    if "cls_token" in vision_keys and "token_embedding.weight" in text_keys:
        return "pytorch"
    if SCENIC_EMBED + "cls" in vision_keys and "token_emb/emb_var" in text_keys:
        return "scenic"
    if "token_embedding.weight" in vision_keys or "token_emb/emb_var" in vision_keys:
        raise CheckpointError(
            "The --vision file holds text-tower keys: were --vision and --text swapped?"
        )
    raise CheckpointError(
        "Cannot tell the checkpoint layout: expected the official PyTorch keys "
        "('cls_token', 'token_embedding.weight') or the Scenic keys "
        f"('{SCENIC_EMBED}cls', 'token_emb/emb_var'). Vision keys start with "
        f"{sorted(vision_keys)[:3]}, text keys with {sorted(text_keys)[:3]}."
    )


def read_official(vision_arrays, text_arrays, source="official npz", num_heads=None):
    """A `Checkpoint` from the two official npz mappings (vision, text)."""
    layout = detect_layout(vision_arrays.keys(), text_arrays.keys())
    if layout == "pytorch":
        return _read_pytorch(vision_arrays, text_arrays, source, num_heads)
    return _read_scenic(vision_arrays, text_arrays, source)


def _read_pytorch(vision_arrays, text_arrays, source, num_heads):
    ckpt = Checkpoint(f"{source} (PyTorch layout)", {})
    vision = KeyReader(vision_arrays, f"{source} vision")
    text = KeyReader(text_arrays, f"{source} text")
    config = torch_layouts.add_vision(
        ckpt, vision, torch_layouts.OFFICIAL, num_heads=num_heads, gelu="gelu"
    )
    config.update(torch_layouts.add_text(ckpt, text, torch_layouts.OFFICIAL, num_heads))
    # The official PyTorch text tower uses nn.LayerNorm's default epsilon.
    config["text_layer_norm_epsilon"] = 1e-5
    vision.finish()
    text.finish()
    ckpt.config = config
    return ckpt


def _scenic_dense(ckpt, reader, dst, src, kind):
    """Adds one Scenic Dense / attention projection under our fused layout."""
    if kind == "qkv":
        kernels = [reader.lazy(f"{src}{n}/kernel") for n in ("query", "key", "value")]
        biases = [reader.lazy(f"{src}{n}/bias") for n in ("query", "key", "value")]
        width = reader.shape(f"{src}query/kernel")[0]
        ckpt.add(
            f"{dst}/kernel",
            f"{src}query/kernel",
            lambda: np.concatenate([k().reshape(width, -1) for k in kernels], axis=1),
        )
        ckpt.add(
            f"{dst}/bias",
            f"{src}query/bias",
            lambda: np.concatenate([b().reshape(-1) for b in biases]),
        )
    elif kind == "out":
        kernel = reader.lazy(f"{src}out/kernel")  # (H, hd, D)
        width = reader.shape(f"{src}out/kernel")[-1]
        ckpt.add(f"{dst}/kernel", f"{src}out/kernel", lambda: kernel().reshape(-1, width))
        ckpt.add(f"{dst}/bias", f"{src}out/bias", reader.lazy(f"{src}out/bias"))
    else:
        ckpt.add(f"{dst}/kernel", f"{src}kernel", reader.lazy(f"{src}kernel"))
        ckpt.add(f"{dst}/bias", f"{src}bias", reader.lazy(f"{src}bias"))


def _scenic_norm(ckpt, reader, dst, src):
    ckpt.add(f"{dst}/gamma", f"{src}scale", reader.lazy(f"{src}scale"))
    ckpt.add(f"{dst}/beta", f"{src}bias", reader.lazy(f"{src}bias"))


def _scenic_attention_and_norms(ckpt, reader, dst, src):
    attn = src + "MultiHeadDotProductAttention_0/"
    _scenic_norm(ckpt, reader, f"{dst}/norm1", src + "LayerNorm_0/")
    _scenic_dense(ckpt, reader, f"{dst}/attn/qkv", attn, "qkv")
    _scenic_dense(ckpt, reader, f"{dst}/attn/proj", attn, "out")
    _scenic_norm(ckpt, reader, f"{dst}/norm2", src + "LayerNorm_1/")


def _scenic_mlp(ckpt, reader, dst, src):
    _scenic_dense(ckpt, reader, f"{dst}/fc1", src + "MlpBlock_0/Dense_0/", "dense")
    _scenic_dense(ckpt, reader, f"{dst}/fc2", src + "MlpBlock_0/Dense_1/", "dense")


def _scenic_swiglu(ckpt, reader, dst, src):
    # Our fc1 packs [gate | value] on its output axis, like PyTorch's w12.
    ffn = src + "FFNSwiGluFused_0/"
    gate, value = reader.lazy(ffn + "Dense_0/kernel"), reader.lazy(ffn + "Dense_1/kernel")
    gate_b, value_b = reader.lazy(ffn + "Dense_0/bias"), reader.lazy(ffn + "Dense_1/bias")
    ckpt.add(f"{dst}/fc1/kernel", ffn + "Dense_0/kernel",
             lambda: np.concatenate([gate(), value()], axis=1))
    ckpt.add(f"{dst}/fc1/bias", ffn + "Dense_0/bias",
             lambda: np.concatenate([gate_b(), value_b()]))
    _scenic_dense(ckpt, reader, f"{dst}/fc2", ffn + "Dense_2/", "dense")


def _read_scenic(vision_arrays, text_arrays, source):
    ckpt = Checkpoint(f"{source} (Scenic layout)", {})
    vision = KeyReader(vision_arrays, f"{source} vision")
    text = KeyReader(text_arrays, f"{source} text")

    kernel = vision.get(SCENIC_EMBED + "embedding/kernel")  # HWIO already
    patch_size, width = kernel.shape[0], kernel.shape[-1]
    ckpt.add("vision/patch/kernel", SCENIC_EMBED + "embedding/kernel", lambda: kernel)
    ckpt.add("vision/patch/bias", SCENIC_EMBED + "embedding/bias", vision.lazy(SCENIC_EMBED + "embedding/bias"))
    ckpt.add("vision/cls_tokens", SCENIC_EMBED + "cls", vision.lazy(SCENIC_EMBED + "cls"))
    pos_shape = vision.shape(SCENIC_EMBED + "posembed_input")
    ckpt.add("vision/position_embedding", SCENIC_EMBED + "posembed_input", vision.lazy(SCENIC_EMBED + "posembed_input"))

    depth = block_count(vision.keys(), SCENIC_VISION_BLOCK + "LayerNorm_0/scale")
    if depth == 0:
        raise CheckpointError(f"{source} vision: no encoder blocks found.")
    swiglu = vision.has(SCENIC_VISION_BLOCK.format(0) + "FFNSwiGluFused_0/Dense_0/kernel")
    for i in range(depth):
        src = SCENIC_VISION_BLOCK.format(i)
        _scenic_attention_and_norms(ckpt, vision, f"vision/block_{i}", src)
        mlp = _scenic_swiglu if swiglu else _scenic_mlp
        mlp(ckpt, vision, f"vision/block_{i}/mlp", src)
    _scenic_norm(ckpt, vision, "vision/norm", "encoder/encoder_norm/")
    first = SCENIC_VISION_BLOCK.format(0)
    heads = vision.shape(first + "MultiHeadDotProductAttention_0/query/kernel")[1]
    if swiglu:
        hidden = vision.shape(first + "FFNSwiGluFused_0/Dense_0/kernel")[1]
    else:
        hidden = vision.shape(first + "MlpBlock_0/Dense_0/kernel")[1]

    vocab, text_width = text.shape("token_emb/emb_var")
    ckpt.add("text/token_embedding", "token_emb/emb_var", text.lazy("token_emb/emb_var"))
    text_depth = block_count(text.keys(), SCENIC_TEXT_BLOCK + "LayerNorm_0/scale")
    if text_depth == 0:
        raise CheckpointError(f"{source} text: no encoder blocks found.")
    for i in range(text_depth):
        src = SCENIC_TEXT_BLOCK.format(i)
        _scenic_attention_and_norms(ckpt, text, f"text/block_{i}", src)
        _scenic_mlp(ckpt, text, f"text/block_{i}", src)
    _scenic_norm(ckpt, text, "text/norm", "text_encoder_norm/")
    temperature = text.get("temperature_contrastive")
    ckpt.add("log_temperature", "temperature_contrastive", lambda: temperature_to_log(temperature))
    text_first = SCENIC_TEXT_BLOCK.format(0) + "MultiHeadDotProductAttention_0/query/kernel"
    vision.finish()
    text.finish()
    ckpt.config = dict(
        vision_patch_size=int(patch_size),
        vision_hidden_dim=int(width),
        vision_num_layers=int(depth),
        vision_num_heads=int(heads),
        vision_intermediate_dim=int(hidden),
        # Flax's nn.gelu defaults to the tanh approximation.
        vision_mlp_activation="swiglu" if swiglu else "gelu_tanh",
        vision_position_grid=(int(pos_shape[1]), int(pos_shape[2])),
        text_vocabulary_size=int(vocab),
        text_hidden_dim=int(text_width),
        text_num_layers=int(text_depth),
        text_num_heads=int(text.shape(text_first)[1]),
        text_intermediate_dim=int(text.shape(SCENIC_TEXT_BLOCK.format(0) + "MlpBlock_0/Dense_0/kernel")[1]),
        text_layer_norm_epsilon=1e-6,
    )
    return ckpt


def load_npz(path):
    """Opens an npz lazily; arrays are read when first indexed."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"Checkpoint file not found: {path}") from None
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError
        raise CheckpointError(f"{path} is not a readable .npz file: {e}") from e
