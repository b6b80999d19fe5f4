"""DPT decoder weights -> `TIPSv2DPTHead` and the dense tasks.

Two sources (google-deepmind/tips, `pytorch/decoders.py` and the released
decoder files):
- the official Flax `.zip` decoder files: a zip of `.npy` arrays keyed by
  "/" paths (optionally under `decoder/`), convolutions in Keras' HWIO
  layout already, ConvTranspose kernels as Flax stores them
  (`transpose_kernel=False`, so rotated 180 degrees and in/out swapped
  relative to Keras' `Conv2DTranspose`);
- `transformers`' `Tipsv2Dpt*` state dicts (PyTorch layouts).

Conversion is strict: a missing, unexpected or mis-shaped key raises an
error that names it.
"""

import io
import zipfile

import numpy as np

from keras_tipsv2.layers.dpt import TIPSv2DPTHead
from keras_tipsv2.models.tipsv2_dense_tasks import (
    TIPSv2DenseSegmenter,
    TIPSv2DepthEstimator,
    TIPSv2NormalEstimator,
)

# Head Dense names the official loader accepts; each zip holds one of them.
FLAX_HEAD_NAMES = (
    "pixel_segmentation",
    "pixel_depth_classif",
    "pixel_depth_regress",
    "pixel_normals",
    "segmentation_head",
)
# A buffer of the depth zips that the model recomputes from its config.
FLAX_BUFFERS = ("bin_centers",)

TASKS = {
    "depth": TIPSv2DepthEstimator,
    "normals": TIPSv2NormalEstimator,
    "segmentation": TIPSv2DenseSegmenter,
}


class DPTConversionError(ValueError):
    """A decoder checkpoint does not fit the head it is loaded into."""


def _rotated_swapped(kernel):
    # Flax ConvTranspose (kh, kw, in, out), no kernel flip -> Keras
    # Conv2DTranspose (kh, kw, out, in), which flips: K[a, b, o, i] =
    # K_flax[k-1-a, k-1-b, i, o].
    return np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))


FLAX_TO_KERAS = {
    "dense": lambda w: w,
    "conv": lambda w: w,
    "conv_transpose": _rotated_swapped,
    "bias": lambda w: w,
}
TORCH_TO_KERAS = {
    "dense": lambda w: w.T,  # (out, in) -> (in, out)
    "conv": lambda w: w.transpose(2, 3, 1, 0),  # OIHW -> HWIO
    # ConvTranspose2d (in, out, kh, kw) -> Conv2DTranspose (kh, kw, out, in);
    # both are true transposed convolutions, so no flip.
    "conv_transpose": lambda w: w.transpose(2, 3, 1, 0),
    "bias": lambda w: w,
}


def _conv_entries(key, layer, kind="conv", weight="kernel"):
    entries = {f"{key}/{weight}": (layer.kernel, kind)}
    if layer.use_bias:
        entries[f"{key}/bias"] = (layer.bias, "bias")
    return entries


def _resize_kind(factor):
    return "conv_transpose" if factor > 1 else "conv"


def flax_variable_map(head):
    """{Flax key without `decoder/`: (variable, layout kind)} for a head.

    The head Dense is keyed as `<head>/kernel`; the loader substitutes the
    name found in the file.
    """
    entries = {}
    rb = "dpt/reassemble_blocks"
    for k in range(head.num_levels):
        entries.update(_conv_entries(f"{rb}/readout_projects_{k}", head.readouts[k].dense, "dense"))
        reassemble = head.reassembles[k]
        entries.update(_conv_entries(f"{rb}/out_projection_{k}", reassemble.projection))
        if reassemble.resize is not None:
            entries.update(
                _conv_entries(
                    f"{rb}/resize_layers_{k}",
                    reassemble.resize,
                    _resize_kind(reassemble.factor),
                )
            )
        entries.update(_conv_entries(f"dpt/convs_{k}", head.convs[k]))
        block = head.fusion_blocks[k]
        units = [block.residual_unit, block.main_unit] if block.has_residual else [block.main_unit]
        for u, unit in enumerate(units):
            for conv in ("conv1", "conv2"):
                entries.update(
                    _conv_entries(
                        f"dpt/fusion_blocks_{k}/PreActResidualConvUnit_{u}/{conv}",
                        getattr(unit, conv),
                    )
                )
        entries.update(_conv_entries(f"dpt/fusion_blocks_{k}/Conv_0", block.out_conv))
    entries.update(_conv_entries("dpt/project", head.project))
    entries.update(_conv_entries("<head>", head.output_dense, "dense"))
    return entries


def hf_variable_map(head, neck_prefix="neck.", decoder_prefix="decoder."):
    """{`transformers` state-dict key: (variable, layout kind)} for a head."""
    entries = {}

    def add(key, layer, kind="conv"):
        entries[f"{key}.weight"] = (layer.kernel, kind)
        if layer.use_bias:
            entries[f"{key}.bias"] = (layer.bias, "bias")

    rs = f"{neck_prefix}reassemble_stage"
    for k in range(head.num_levels):
        add(f"{rs}.readout_projects.{k}.layers.0", head.readouts[k].dense, "dense")
        reassemble = head.reassembles[k]
        add(f"{rs}.layers.{k}.projection", reassemble.projection)
        if reassemble.resize is not None:
            add(f"{rs}.layers.{k}.resize", reassemble.resize, _resize_kind(reassemble.factor))
        add(f"{neck_prefix}convs.{k}", head.convs[k])
        block = head.fusion_blocks[k]
        fs = f"{neck_prefix}fusion_stage.layers.{k}"
        add(f"{fs}.projection", block.out_conv)
        units = {"residual_layer2": block.main_unit}
        if block.has_residual:
            units["residual_layer1"] = block.residual_unit
        for name, unit in units.items():
            add(f"{fs}.{name}.convolution1", unit.conv1)
            add(f"{fs}.{name}.convolution2", unit.conv2)
    add(f"{decoder_prefix}project", head.project)
    add(f"{decoder_prefix}head", head.output_dense, "dense")
    return entries


def hub_variable_map(head, task):
    """{hub key: (variable, layout kind)}: the official PyTorch decoder names.

    The files on the Hugging Face hub (and `save_pretrained`) keep the
    official `pytorch/decoders.py` names under `{task}_head.`, e.g.
    `depth_head.reassemble.readout_projects.0.weight`,
    `depth_head.fusion_blocks.1.residual_unit.conv1.weight`,
    `depth_head.depth_head.weight` (transformers' `Tipsv2Dpt`).
    """
    prefix = f"{task}_head."
    entries = {}

    def add(key, layer, kind="conv"):
        entries[f"{prefix}{key}.weight"] = (layer.kernel, kind)
        if layer.use_bias:
            entries[f"{prefix}{key}.bias"] = (layer.bias, "bias")

    for k in range(head.num_levels):
        add(f"reassemble.readout_projects.{k}", head.readouts[k].dense, "dense")
        reassemble = head.reassembles[k]
        add(f"reassemble.out_projections.{k}", reassemble.projection)
        if reassemble.resize is not None:
            add(f"reassemble.resize_layers.{k}", reassemble.resize, _resize_kind(reassemble.factor))
        add(f"convs.{k}", head.convs[k])
        block = head.fusion_blocks[k]
        add(f"fusion_blocks.{k}.out_conv", block.out_conv)
        units = {"main_unit": block.main_unit}
        if block.has_residual:
            units["residual_unit"] = block.residual_unit
        for name, unit in units.items():
            add(f"fusion_blocks.{k}.{name}.conv1", unit.conv1)
            add(f"fusion_blocks.{k}.{name}.conv2", unit.conv2)
    add("project", head.project)
    add(f"{task}_head", head.output_dense, "dense")
    return entries


def _assign(entries, arrays, layouts, source):
    """Checks every key and shape first, then writes all variables."""
    missing = sorted(set(entries) - set(arrays))
    extra = sorted(set(arrays) - set(entries))
    if missing:
        raise DPTConversionError(
            f"{source}: missing key(s) {missing} that the head needs."
        )
    if extra:
        raise DPTConversionError(
            f"{source}: unexpected key(s) {extra} that the head has no place for."
        )
    values = []
    for key, (variable, kind) in entries.items():
        array = np.asarray(arrays[key], dtype="float32")
        value = layouts[kind](array)
        if tuple(value.shape) != tuple(variable.shape):
            raise DPTConversionError(
                f"{source}: key {key!r} has shape {tuple(array.shape)} "
                f"({tuple(value.shape)} in Keras layout) but "
                f"{variable.path} has shape {tuple(variable.shape)}."
            )
        values.append((variable, value))
    for variable, value in values:
        variable.assign(value)


def read_flax_zip(path_or_bytes):
    """{key: array} from an official decoder `.zip` of `.npy` files."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        path_or_bytes = io.BytesIO(path_or_bytes)
    arrays = {}
    with zipfile.ZipFile(path_or_bytes) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as member:
                arrays[name[: -len(".npy")]] = np.load(
                    io.BytesIO(member.read()), allow_pickle=False
                )
    if not arrays:
        raise DPTConversionError(f"{path_or_bytes}: no .npy arrays in the zip.")
    return arrays


def _normalise_flax_keys(arrays):
    """Strips `decoder/`, restores a missing `dpt/`, names the head Dense."""
    out, heads = {}, set()
    for key, value in arrays.items():
        if key.startswith("decoder/"):
            key = key[len("decoder/") :]
        top = key.split("/", 1)[0]
        if top in FLAX_BUFFERS:
            continue
        if top in FLAX_HEAD_NAMES:
            heads.add(top)
            key = "<head>" + key[len(top) :]
        elif top != "dpt":
            key = "dpt/" + key
        out[key] = value
    if len(heads) > 1:
        raise DPTConversionError(
            f"The decoder file holds several task heads {sorted(heads)}; expected one."
        )
    return out


def load_flax_dpt_head(head, arrays, source="Flax DPT decoder"):
    """Loads official Flax decoder arrays ({"/" key: array}) into `head`."""
    if not isinstance(head, TIPSv2DPTHead):
        raise TypeError(f"Expected a TIPSv2DPTHead; got {type(head).__name__}.")
    if not head.built:
        head.build()
    _assign(flax_variable_map(head), _normalise_flax_keys(arrays), FLAX_TO_KERAS, source)
    return head


def load_hf_dpt_head(head, state_dict, neck_prefix="neck.", decoder_prefix="decoder."):
    """Loads one neck + decoder of a `transformers` Tipsv2Dpt state dict.

    Keys outside the two prefixes (the backbone, the other tasks' heads) are
    left alone; inside them every key must fit.
    """
    if not isinstance(head, TIPSv2DPTHead):
        raise TypeError(f"Expected a TIPSv2DPTHead; got {type(head).__name__}.")
    if not head.built:
        head.build()
    arrays = {
        k: _to_numpy(v)
        for k, v in state_dict.items()
        if k.startswith(neck_prefix) or k.startswith(decoder_prefix)
    }
    _assign(
        hf_variable_map(head, neck_prefix, decoder_prefix),
        arrays,
        TORCH_TO_KERAS,
        f"transformers Tipsv2Dpt ({neck_prefix}*, {decoder_prefix}*)",
    )
    return head


def load_hub_dpt_head(head, state_dict, task):
    """Loads the `{task}_head.*` keys of a hub-format Tipsv2Dpt checkpoint."""
    if not head.built:
        head.build()
    prefix = f"{task}_head."
    arrays = {k: _to_numpy(v) for k, v in state_dict.items() if k.startswith(prefix)}
    _assign(hub_variable_map(head, task), arrays, TORCH_TO_KERAS, f"Tipsv2Dpt hub file ({prefix}*)")
    return head


def _to_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def hf_prefixes(state_dict, task):
    """(neck, decoder) prefixes of `task` in a single- or all-task model."""
    if any(k.startswith(f"{task}_neck.") for k in state_dict):
        return f"{task}_neck.", f"{task}_decoder."
    if any(k.startswith("neck.") for k in state_dict):
        return "neck.", "decoder."
    raise DPTConversionError(
        f"No '{task}_neck.*' or 'neck.*' keys in the state dict: not a "
        "transformers Tipsv2Dpt checkpoint."
    )


def dense_task_kwargs_from_hf(hf_config, task):
    """Task constructor arguments from a `Tipsv2DptConfig.to_dict()`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}; got {task!r}.")
    factors = [float(f) for f in hf_config.get("reassemble_factors") or (4, 2, 1, 0.5)]
    if factors != [4.0, 2.0, 1.0, 0.5]:
        raise DPTConversionError(
            f"reassemble_factors {factors} differ from the published (4, 2, 1, 0.5)."
        )
    out_indices = hf_config["backbone_config"]["out_indices"]
    kwargs = {
        # transformers counts the embedding output as hidden state 0.
        "intermediate_indices": [int(i) - 1 for i in out_indices],
        "post_process_channels": list(hf_config["neck_hidden_sizes"]),
        "fusion_channels": int(hf_config["fusion_hidden_size"]),
    }
    if task == "depth":
        kwargs.update(
            num_depth_bins=int(hf_config["num_depth_bins"]),
            min_depth=float(hf_config["min_depth"]),
            max_depth=float(hf_config["max_depth"]),
            project_activation=hf_config.get("depth_decoder_activation"),
        )
    elif task == "segmentation":
        kwargs["num_classes"] = len(hf_config["id2label"])
    return kwargs


def dense_task_from_hf(hf_config, state_dict, task, backbone):
    """A dense task with its head converted from `transformers` weights.

    The Tipsv2Dpt checkpoints carry only the image tower, so the backbone
    (with its text tower) is given, e.g. converted from the matching
    Tipsv2Model checkpoint.

    Args:
        hf_config: `Tipsv2DptConfig.to_dict()`.
        state_dict: {key: array or torch tensor}.
        task: "depth", "normals" or "segmentation".
        backbone: a `TIPSv2Backbone` whose image tower the head was trained on.
    """
    model = TASKS[task](backbone, **dense_task_kwargs_from_hf(hf_config, task))
    if any(k.startswith(f"{task}_head.") for k in state_dict):
        load_hub_dpt_head(model.head, state_dict, task)
    else:
        load_hf_dpt_head(model.head, state_dict, *hf_prefixes(state_dict, task))
    return model


def dense_task_from_flax_zip(path_or_bytes, task, backbone, **task_kwargs):
    """A dense task whose DPT head comes from an official Flax decoder zip."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}; got {task!r}.")
    model = TASKS[task](backbone, **task_kwargs)
    load_flax_dpt_head(model.head, read_flax_zip(path_or_bytes), "Flax DPT decoder zip")
    return model
