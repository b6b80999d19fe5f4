"""Exponential moving averages of weights, and the parameter bookkeeping of
head-only (TIPSv2) versus full (TIPS v1) EMA teachers."""

from keras import ops

EMA_MODES = ("head", "full")


def ema_update(teacher_variables, student_variables, momentum):
    """teacher <- momentum * teacher + (1 - momentum) * student, in place.

    Backend-agnostic assignments; inside the JAX train step they run in a
    `StatelessScope`, so they become part of the returned state.
    """
    if len(teacher_variables) != len(student_variables):
        raise ValueError(
            "EMA teacher and student must have the same variables; got "
            f"{len(teacher_variables)} and {len(student_variables)}."
        )
    momentum = ops.cast(momentum, "float32")
    for teacher, student in zip(teacher_variables, student_variables):
        if tuple(teacher.shape) != tuple(student.shape):
            raise ValueError(
                f"EMA shape mismatch: {teacher.path} {teacher.shape} vs "
                f"{student.path} {student.shape}."
            )
        new = momentum * ops.cast(teacher.value, "float32") + (1.0 - momentum) * ops.cast(
            ops.stop_gradient(student.value), "float32"
        )
        teacher.assign(ops.cast(new, teacher.dtype))


def copy_weights(target_variables, source_variables):
    """target <- source. `ops.copy` so JAX never aliases the two buffers
    (aliasing makes the first jitted step fail with "donate the same buffer
    twice")."""
    for target, source in zip(target_variables, source_variables):
        target.assign(ops.copy(source.value))


def vit_parameter_count(
    hidden_dim,
    num_layers,
    intermediate_dim,
    patch_size=14,
    position_grid=(32, 32),
    num_cls_tokens=2,
    mlp_activation="gelu",
    layer_scale=False,
):
    """Parameters of a TIPSv2 image tower, counted from its shape."""
    d = hidden_dim
    embedding = (
        patch_size * patch_size * 3 * d + d  # patch projection
        + num_cls_tokens * d
        + position_grid[0] * position_grid[1] * d
        + d  # mask token
    )
    mlp_width = 2 * intermediate_dim if mlp_activation == "swiglu" else intermediate_dim
    block = (
        2 * d  # norm1
        + d * 3 * d + 3 * d  # qkv
        + d * d + d  # proj
        + 2 * d  # norm2
        + d * mlp_width + mlp_width  # fc1
        + intermediate_dim * d + d  # fc2
        + (2 * d if layer_scale else 0)
    )
    return embedding + num_layers * block + 2 * d  # + final norm


def head_parameter_count(input_dim, hidden_dim=2048, bottleneck_dim=256, num_prototypes=32768, num_layers=3):
    """Parameters of a `TIPSv2ProjectionHead` (prototype gains are fixed)."""
    widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
    mlp = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    return mlp + bottleneck_dim * num_prototypes


def pretraining_parameter_counts(vision_parameters, head_parameters, ema="head"):
    """Vision-side parameters held in training under each EMA mode.

    Args:
        vision_parameters: image tower parameter count.
        head_parameters: projection head count (one head shared by DINO and
            iBOT++).
        ema: "head" (TIPSv2: the teacher is the student tower under
            stop_gradient, only the head has an EMA copy) or "full" (TIPS v1:
            EMA copies of tower and head).

    Returns:
        {"trained": ..., "ema": ..., "total": ...}.
    """
    if ema not in EMA_MODES:
        raise ValueError(f"ema must be one of {EMA_MODES}; got {ema!r}.")
    trained = vision_parameters + head_parameters
    ema_count = head_parameters + (vision_parameters if ema == "full" else 0)
    return {"trained": trained, "ema": ema_count, "total": trained + ema_count}
