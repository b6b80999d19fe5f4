"""Checks of `TIPSv2Backbone` constructor arguments, as read from a config.

A preset's config.json is data written by someone else: a width written as
4.0 or "128", or an activation the towers do not know, must stop the load
with an error naming the field, not build a different model or fail deep
inside a layer. The preset loader adds the file's name to the message.
"""

import numbers

from keras_tipsv2.layers.vision_block import MLP_ACTIVATIONS

POSITIVE_INTEGERS = (
    "vision_patch_size",
    "vision_hidden_dim",
    "vision_num_heads",
    "vision_intermediate_dim",
    "vision_num_cls_tokens",
    "text_vocabulary_size",
    "text_hidden_dim",
    "text_num_heads",
    "text_intermediate_dim",
    "text_max_sequence_length",
)
# A tower of no blocks (embedding and final norm only) is a valid model.
BLOCK_COUNTS = ("vision_num_layers", "text_num_layers")
POSITIVE_NUMBERS = (
    "vision_layer_norm_epsilon",
    "text_layer_norm_epsilon",
    "initial_temperature",
)


class BackboneConfigError(ValueError):
    """A `TIPSv2Backbone` argument has the wrong type or value."""


def _describe(value):
    return f"{value!r} ({type(value).__name__})"


def _is_int(value):
    # bool is an int to Python, never a width or a count to us.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive_integer(name, value):
    if not _is_int(value) or value < 1:
        raise BackboneConfigError(f"{name} must be a positive integer; got {_describe(value)}.")


def _check_positive_number(name, value):
    if not _is_number(value) or not value > 0:
        raise BackboneConfigError(f"{name} must be a positive number; got {_describe(value)}.")


def _check_layer_scale_init(value, num_layers):
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(_is_number(v) for v in values) or not values:
        raise BackboneConfigError(
            "vision_layer_scale_init must be a number or a list of numbers; "
            f"got {_describe(value)}."
        )
    if isinstance(value, (list, tuple)) and len(values) != num_layers:
        raise BackboneConfigError(
            f"vision_layer_scale_init has {len(values)} values but the tower has "
            f"{num_layers} blocks (vision_num_layers); give one number or one per block."
        )


def _check_image_shape(value):
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and value[-1] == 3
        and all(side is None or (_is_int(side) and side > 0) for side in value[:2])
    )
    if not ok:
        raise BackboneConfigError(
            "image_shape must be (height, width, 3) with sides None or positive "
            f"integers; got {_describe(value)}."
        )


def check_backbone_config(arguments):
    """Raises `BackboneConfigError` naming the first ill-typed argument.

    Args:
        arguments: the `TIPSv2Backbone` constructor's arguments by name
            (other names, e.g. `self` or `dtype`, are ignored).
    """
    for name in POSITIVE_INTEGERS:
        _check_positive_integer(name, arguments[name])
    for name in BLOCK_COUNTS:
        if not _is_int(arguments[name]) or arguments[name] < 0:
            raise BackboneConfigError(
                f"{name} must be a non-negative integer; got {_describe(arguments[name])}."
            )
    for name in POSITIVE_NUMBERS:
        _check_positive_number(name, arguments[name])
    for tower in ("vision", "text"):
        width, heads = arguments[f"{tower}_hidden_dim"], arguments[f"{tower}_num_heads"]
        if width % heads:
            raise BackboneConfigError(
                f"{tower}_hidden_dim ({width}) must be a multiple of "
                f"{tower}_num_heads ({heads})."
            )
    if arguments["vision_hidden_dim"] != arguments["text_hidden_dim"]:
        raise BackboneConfigError(
            "TIPSv2 compares image and text embeddings directly, so "
            f"vision_hidden_dim ({arguments['vision_hidden_dim']}) must equal "
            f"text_hidden_dim ({arguments['text_hidden_dim']})."
        )
    if arguments["vision_mlp_activation"] not in MLP_ACTIVATIONS:
        raise BackboneConfigError(
            f"vision_mlp_activation must be one of {MLP_ACTIVATIONS}; got "
            f"{_describe(arguments['vision_mlp_activation'])}."
        )
    grid = arguments["vision_position_grid"]
    if not (
        isinstance(grid, (list, tuple)) and len(grid) == 2 and all(_is_int(g) and g > 0 for g in grid)
    ):
        raise BackboneConfigError(
            f"vision_position_grid must be two positive integers; got {_describe(grid)}."
        )
    if not isinstance(arguments["vision_layer_scale"], bool):
        raise BackboneConfigError(
            "vision_layer_scale must be true or false; got "
            f"{_describe(arguments['vision_layer_scale'])}."
        )
    _check_layer_scale_init(arguments["vision_layer_scale_init"], arguments["vision_num_layers"])
    rate = arguments["vision_drop_path_rate"]
    if not _is_number(rate) or not 0 <= rate < 1:
        raise BackboneConfigError(
            f"vision_drop_path_rate must be a number in [0, 1); got {_describe(rate)}."
        )
    _check_image_shape(arguments["image_shape"])
