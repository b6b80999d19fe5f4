"""iBOT patch masks, shaped (B, h, w) bool with True = masked.

Two generators, for two places:

* `random_patch_masks` (the TIPSv2 default, 75 %) runs inside the train
  step with `keras.random` and a `SeedGenerator`. It needs no data-dependent
  control flow (ranks from a double argsort of uniform noise), so it traces
  under `jax.jit`, `tf.function` and torch alike, and the seed state is a
  model variable: it advances on every step and is saved in checkpoints.
  The count is exact (`round(ratio * h * w)` per image) even with ties in
  the noise, because ranks are unique.
* `block_patch_masks` (BEiT / DINOv2 block-wise) places random rectangles in
  a loop whose trip count depends on the draws, which no backend jits well.
  It is NumPy, meant for the data pipeline, which then puts the masks in
  the batch under the key "masks".
"""

import math

import keras
import numpy as np
from keras import ops

from keras_tipsv2.training import distribution


def num_masked_patches(height, width, ratio):
    """round(ratio * h * w), the exact per-image masked count."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1]; got {ratio}.")
    return int(round(ratio * height * width))


def random_patch_masks(batch_size, height, width, ratio=0.75, seed=None):
    """Uniformly random masks with exactly round(ratio*h*w) True per image.

    Args:
        batch_size: B (a Python int or a traced dimension).
        height, width: the patch grid (Python ints).
        ratio: masked fraction, 0.75 for TIPSv2.
        seed: a `keras.random.SeedGenerator` (inside a train step) or an int.

    Returns:
        (B, h, w) bool tensor.
    """
    count = num_masked_patches(height, width, ratio)
    noise = keras.random.uniform((batch_size, height * width), seed=seed)
    # The rank of each token in its image's noise order; ranks are a
    # permutation, so "rank < count" masks exactly `count` tokens.
    ranks = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)
    return ops.reshape(ranks < count, (batch_size, height, width))


def replica_random_masks(batch_size, height, width, ratio, seed):
    """`random_patch_masks` for this replica's `batch_size` images: under
    data parallelism (TensorFlow, torch) each replica draws the masks of
    the global batch from the same seed state and keeps its own rows, so
    the masks are those one device would draw."""
    global_batch = batch_size * distribution.num_replicas()
    masks = random_patch_masks(global_batch, height, width, ratio, seed=seed)
    return distribution.replica_slice(masks, batch_size)


def block_patch_masks(
    height,
    width,
    ratio=0.75,
    rng=None,
    min_block_patches=4,
    max_block_fraction=0.5,
    min_aspect=0.3,
    max_tries=10,
):
    """One BEiT-style block-wise mask (h, w) bool, in NumPy.

    Rectangles of area uniform in [min_block_patches, remaining budget]
    (capped at `max_block_fraction` of the grid) and log-uniform aspect ratio
    in [min_aspect, 1 / min_aspect] are placed until round(ratio*h*w) patches
    are covered; only newly covered patches count. When blocks stop fitting
    (small grids), the remainder is filled with random single patches so the
    count is always exact.

    Args:
        height, width: the patch grid.
        ratio: masked fraction.
        rng: a `np.random.Generator` (default: a fresh unseeded one).
        min_block_patches, max_block_fraction, min_aspect, max_tries: the
            BEiT / DINOv2 block parameters.
    """
    rng = np.random.default_rng() if rng is None else rng
    target = num_masked_patches(height, width, ratio)
    mask = np.zeros((height, width), bool)
    max_block = max(min_block_patches, int(max_block_fraction * height * width))
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    failures = 0
    while mask.sum() < target and failures < max_tries:
        budget = min(target - int(mask.sum()), max_block)
        if budget < min_block_patches:
            break
        area = rng.uniform(min_block_patches, budget)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (0 < h < height and 0 < w < width):
            failures += 1
            continue
        top = rng.integers(0, height - h + 1)
        left = rng.integers(0, width - w + 1)
        region = mask[top : top + h, left : left + w]
        new = int((~region).sum())
        if 0 < new <= budget:
            region[:] = True
            failures = 0
        else:
            failures += 1
    missing = target - int(mask.sum())
    if missing > 0:
        free = np.flatnonzero(~mask.ravel())
        mask.ravel()[rng.choice(free, missing, replace=False)] = True
    return mask


def block_patch_masks_batch(batch_size, height, width, ratio=0.75, rng=None, **kwargs):
    """(B, h, w) stack of `block_patch_masks`, for the data pipeline."""
    rng = np.random.default_rng() if rng is None else rng
    return np.stack(
        [block_patch_masks(height, width, ratio, rng=rng, **kwargs) for _ in range(batch_size)]
    )
