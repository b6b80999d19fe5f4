"""Principal components of patch tokens, the usual DINO / TIPS feature picture."""

from keras import ops

from keras_tipsv2.evaluation.pictures import pca_picture
from keras_tipsv2.models.tipsv2_images import resize_bicubic, short_side_size


def pca_components(features, num_components=3):
    """Projects (..., D) features on their first principal components.

    Args:
        features: (h, w, D) patch tokens (any leading shape).
        num_components: how many components to keep.

    Returns:
        (..., num_components) float32 projections. Each component's sign is
        fixed so that its largest-magnitude loading is positive, so the same
        features always give the same picture.
    """
    features = ops.convert_to_tensor(features, dtype="float32")
    shape = tuple(features.shape)
    dim = shape[-1]
    if num_components > dim:
        raise ValueError(
            f"num_components ({num_components}) exceeds the feature width ({dim})."
        )
    flat = ops.reshape(features, (-1, dim))
    centred = flat - ops.mean(flat, axis=0, keepdims=True)
    _, _, vh = ops.svd(centred, full_matrices=False)
    axes = vh[:num_components]
    largest = ops.take_along_axis(
        axes, ops.argmax(ops.abs(axes), axis=1)[:, None], axis=1
    )
    axes = axes * ops.sign(largest)
    projected = ops.matmul(centred, ops.transpose(axes))
    return ops.reshape(projected, shape[:-1] + (num_components,))


def pca_rgb(features):
    """The first three components of (h, w, D) features as an RGB map in [0, 1].

    Each component is min-max scaled on its own.
    """
    components = pca_components(features, 3)
    low = ops.min(components, axis=(0, 1), keepdims=True)
    high = ops.max(components, axis=(0, 1), keepdims=True)
    return (components - low) / ops.maximum(high - low, 1e-12)


def patch_aligned_image(image, short_side, patch_size):
    """uint8 image resized so the short side is about `short_side` and both
    sides are whole numbers of patches (each patch then maps to one cell)."""
    height, width = short_side_size(*image.shape[:2], short_side)
    size = (
        max(patch_size, height // patch_size * patch_size),
        max(patch_size, width // patch_size * patch_size),
    )
    return resize_bicubic(image, size)


def pca_image(backbone, image, short_side=448):
    """The image (resized to whole patches) beside its patch-token PCA map."""
    image = patch_aligned_image(image, short_side, backbone.vision_patch_size)
    tokens = backbone.encode_images(image[None].astype("float32") / 255.0)
    pca = ops.convert_to_numpy(pca_rgb(tokens["patch_tokens"][0]))
    return pca_picture(image, pca)
