import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.training.masking import (
    block_patch_masks,
    block_patch_masks_batch,
    num_masked_patches,
    random_patch_masks,
)


def test_random_masks_mask_exactly_75_percent_per_image():
    masks = ops.convert_to_numpy(random_patch_masks(5, 4, 6, 0.75, seed=keras.random.SeedGenerator(0)))
    assert masks.shape == (5, 4, 6) and masks.dtype == bool
    np.testing.assert_array_equal(masks.reshape(5, -1).sum(1), [18] * 5)


def test_random_masks_differ_between_images_and_calls():
    seed = keras.random.SeedGenerator(1)
    a = ops.convert_to_numpy(random_patch_masks(4, 4, 4, 0.5, seed=seed))
    b = ops.convert_to_numpy(random_patch_masks(4, 4, 4, 0.5, seed=seed))
    assert len({m.tobytes() for m in a}) > 1
    assert not np.array_equal(a, b)


def test_mask_ratio_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="mask ratio"):
        num_masked_patches(4, 4, 1.5)


def test_block_masks_have_exact_count_and_contain_a_block():
    rng = np.random.default_rng(0)
    masks = block_patch_masks_batch(8, 14, 14, 0.4, rng=rng)
    np.testing.assert_array_equal(masks.reshape(8, -1).sum(1), [round(0.4 * 196)] * 8)
    # Block-wise: at least one masked patch has a masked right neighbour
    # and a masked lower neighbour (a 2x2 square) in every image.
    squares = masks[:, :-1, :-1] & masks[:, 1:, :-1] & masks[:, :-1, 1:] & masks[:, 1:, 1:]
    assert squares.reshape(8, -1).any(1).all()


def test_block_masks_are_more_clustered_than_random():
    rng = np.random.default_rng(1)
    block = np.stack([block_patch_masks(14, 14, 0.3, rng=rng) for _ in range(16)])
    rand = ops.convert_to_numpy(random_patch_masks(16, 14, 14, 0.3, seed=2))

    def neighbour_agreement(m):
        return (m[:, 1:] & m[:, :-1]).sum() + (m[:, :, 1:] & m[:, :, :-1]).sum()

    assert neighbour_agreement(block) > 1.5 * neighbour_agreement(rand)
