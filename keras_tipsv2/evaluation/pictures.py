"""PIL pictures: PCA maps beside images, segmentation overlays with a legend."""

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

# Distinct, saturated colours (Tableau 20 order); labels cycle through them.
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
        (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
        (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
        (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148),
        (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
    ],
    dtype="uint8",
)  # fmt: skip


def as_uint8_image(image):
    """(H, W, 3) uint8 from uint8 or [0, 1] float pixels."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype("uint8")


def label_colours(labels):
    """(H, W, 3) uint8 colours of an (H, W) integer label map."""
    return PALETTE[np.asarray(labels) % len(PALETTE)]


def side_by_side(*pictures, gap=4):
    """Pictures of equal height laid out left to right on white."""
    pictures = [Image.fromarray(as_uint8_image(p)) for p in pictures]
    height = max(p.height for p in pictures)
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + gap
    return canvas


def pca_picture(image, pca_map):
    """The image beside its (h, w, 3) PCA map, upscaled to the image size.

    Nearest-neighbour upscaling keeps each patch a visible square.
    """
    image = as_uint8_image(image)
    height, width = image.shape[:2]
    pca = Image.fromarray(as_uint8_image(pca_map)).resize((width, height), Image.NEAREST)
    return side_by_side(image, np.asarray(pca))


def legend(names, colours, height, swatch=14, padding=6):
    """A white column listing each name beside its colour swatch."""
    font = ImageFont.load_default()
    line = swatch + padding
    widths = [ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font) for n in names]
    width = int(max(widths, default=0)) + swatch + 3 * padding
    canvas = Image.new("RGB", (width, max(height, line * len(names) + padding)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, colour) in enumerate(zip(names, colours)):
        top = padding + i * line
        draw.rectangle(
            [padding, top, padding + swatch, top + swatch],
            fill=tuple(int(c) for c in colour),
            outline="black",
        )
        draw.text((2 * padding + swatch, top), name, fill="black", font=font)
    return canvas


def segmentation_picture(image, labels, label_names, alpha=0.5):
    """The image, its labels blended over it, and a legend of the classes present.

    Args:
        image: (H, W, 3) uint8 or [0, 1] floats.
        labels: (H, W) integer label map at the image's size.
        label_names: names indexed by label.
        alpha: weight of the label colours in the blend.
    """
    image = as_uint8_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"labels {labels.shape} must match the image size {image.shape[:2]}."
        )
    blended = (1 - alpha) * image + alpha * label_colours(labels)
    present = [int(i) for i in np.unique(labels)]
    key = legend(
        [label_names[i] for i in present], label_colours(present), image.shape[0]
    )
    return side_by_side(image, blended.astype("uint8"), np.asarray(key))
