"""Step-indexed schedules, computed with `keras.ops` from a step tensor.

They read the model's own step counter (a non-trainable variable), never
`optimizer.iterations`, which is not part of the stateless JAX state that
the loss function sees.
"""

import math

from keras import ops


def linear_warmup(step, start, end, warmup_steps):
    """start -> end linearly over `warmup_steps`, then constant `end`.

    DINOv2's teacher temperature uses 0.04 -> 0.07 over 30 epochs.
    """
    step = ops.cast(step, "float32")
    if warmup_steps <= 0:
        return ops.cast(end, "float32") + 0.0 * step
    progress = ops.minimum(step / float(warmup_steps), 1.0)
    return start + (end - start) * progress


def cosine_increase(step, start, end, total_steps):
    """start -> end along a half cosine over `total_steps` (DINO's momentum
    schedule), then constant `end`."""
    step = ops.cast(step, "float32")
    if total_steps <= 0:
        return ops.cast(end, "float32") + 0.0 * step
    progress = ops.minimum(step / float(total_steps), 1.0)
    return end - (end - start) * 0.5 * (1.0 + ops.cos(math.pi * progress))
