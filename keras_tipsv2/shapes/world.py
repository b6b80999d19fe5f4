"""ShapesWorld: a procedural image-caption set with pixel labels.

Unlimited, seeded and fast (NumPy rasterisation, about a millisecond per
112 px image), so the whole library can be exercised offline: pretraining on
its captions, zero-shot segmentation against its label maps.

Objects are drawn large relative to the patch on purpose: a small study found
that patch-text alignment of object *identity* (shape, not just colour) only
emerges when an object covers several patches. With the defaults
(112 px, radius 20-40 % of the side) an object spans 3-6 patches of 14 px.

Label vocabularies (class 0 is always "background"):
    "colour":        background + 5 colours
    "shape":         background + 5 shapes
    "colour_shape":  background + 25 "<colour> <shape>" pairs,
                     class 1 + colour_index * 5 + shape_index

On disk, annotations follow the ADE20K convention: the stored value is
class + 1, and 0 is "ignore" (unused here), so a reader that ignores 0 and 255
and subtracts 1 gets the classes above with background as class 0.
"""

import json
import os

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple")
# Saturated colours, far from each other and from the greyish backgrounds.
PALETTE = np.array(
    [[215, 40, 40], [40, 165, 60], [45, 80, 220], [235, 205, 35], [140, 50, 170]],
    dtype=np.float32,
)
TEXTURES = ("noise", "stripes", "gradient", "checks")
VOCABULARIES = ("colour", "shape", "colour_shape")
SPLITS = ("train", "validation")
# Train and held-out images draw their seeds from disjoint ranges.
SPLIT_SIZE = 2**31
NOISE_WORDS = (
    "photo", "image", "stock", "hd", "free", "clipart", "wallpaper", "png",
    "vector", "icon", "2019", "download", "art", "design", "shapes",
)  # fmt: skip
MIN_VISIBLE_FRACTION = 0.6
PLACEMENT_TRIES = 20


def class_names(vocabulary):
    """Returns the text prompt of every class of `vocabulary`, background first.

    Args:
        vocabulary: "colour", "shape" or "colour_shape".
    """
    if vocabulary == "colour":
        return ["background", *COLOURS]
    if vocabulary == "shape":
        return ["background", *SHAPES]
    if vocabulary == "colour_shape":
        return ["background"] + [f"{c} {s}" for c in COLOURS for s in SHAPES]
    raise ValueError(
        f"Unknown vocabulary {vocabulary!r}; expected one of {VOCABULARIES}."
    )


def object_class(vocabulary, colour_index, shape_index):
    """Returns the class id of an object in `vocabulary` (0 is background)."""
    if vocabulary == "colour":
        return 1 + colour_index
    if vocabulary == "shape":
        return 1 + shape_index
    if vocabulary == "colour_shape":
        return 1 + colour_index * len(SHAPES) + shape_index
    raise ValueError(
        f"Unknown vocabulary {vocabulary!r}; expected one of {VOCABULARIES}."
    )


class ShapesWorld:
    """Seeded generator of images of coloured shapes with captions and labels.

    `world.sample(i)` is a pure function of (seed, split, i): the same
    arguments give a bit-identical sample.

    Args:
        image_size: side of the square images in pixels.
        num_objects: (min, max) objects per image, inclusive. An object that
            cannot be placed with at least 60 % of it visible is left out.
        radius_range: object radius as a fraction of the image side; choose
            it relative to the patch (radius * image_size / patch_size is the
            radius in patches).
        split: "train" or "validation"; the two never share a seed.
        seed: the world's seed; different worlds are different datasets.
        describe_background: also name the background in the short caption
            ("... on a striped background") and, half the time each, put its
            texture word and the word "background" in the alt-text. Without
            it only the long caption mentions the background, and the word
            "background" (class 0 of every vocabulary) is barely trained.
        empty_fraction: the probability that an image holds no object at
            all: only its textured background, captioned as such ("an empty
            striped background"). A word that every caption carries is weak
            evidence for a contrastive loss; empty images give "background"
            (class 0 of every vocabulary) a meaning of its own. Drawn from a
            stream of its own, so 0 (the default) leaves every sample
            bit-identical to a world without the option.

    Example:
    ```python
    world = ShapesWorld(image_size=112, split="train")
    s = world.sample(0)
    s["image"]            # (112, 112, 3) uint8
    s["labels"]["shape"]  # (112, 112) uint8, 0 = background
    s["caption_short"]    # "a red circle and a blue star"
    ```
    """

    def __init__(
        self,
        image_size=112,
        num_objects=(1, 3),
        radius_range=(0.2, 0.4),
        split="train",
        seed=0,
        describe_background=False,
        empty_fraction=0.0,
    ):
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
        low, high = num_objects
        if not 1 <= low <= high <= len(COLOURS) * len(SHAPES):
            raise ValueError(
                f"num_objects must be (min, max) with 1 <= min <= max <= 25; "
                f"got {num_objects}."
            )
        if not 0 < radius_range[0] <= radius_range[1] <= 0.5:
            raise ValueError(
                "radius_range must be (min, max) fractions of the image side "
                f"with 0 < min <= max <= 0.5; got {radius_range}."
            )
        if not 0.0 <= empty_fraction < 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1); got {empty_fraction}.")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8; got {image_size}.")
        self.image_size = int(image_size)
        self.num_objects = (int(low), int(high))
        self.radius_range = (float(radius_range[0]), float(radius_range[1]))
        self.split = split
        self.seed = int(seed)
        self.describe_background = bool(describe_background)
        self.empty_fraction = float(empty_fraction)
        centres = np.arange(self.image_size, dtype=np.float32) + 0.5
        self._ys, self._xs = np.meshgrid(centres, centres, indexing="ij")

    def sample_seed(self, index):
        """Returns the integer seed of sample `index` of this split."""
        if not 0 <= index < SPLIT_SIZE:
            raise ValueError(f"index must be in [0, 2**31); got {index}.")
        return SPLITS.index(self.split) * SPLIT_SIZE + int(index)

    def sample(self, index):
        """Returns one sample as a dict.

        Keys: "image" (H, W, 3) uint8; "labels" {vocabulary: (H, W) uint8};
        "alt_text", "caption_short", "caption_long" (str); "objects" (list of
        dicts with colour, shape, centre, radius, size, position, visible
        pixel count), in drawing order (later objects occlude earlier ones).
        """
        rng = np.random.default_rng([self.seed, self.sample_seed(index)])
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        image = self._background(rng, texture)
        if self.is_empty(index):
            objects, instances = [], np.zeros(image.shape[:2], np.int32)
        else:
            objects, instances = self._place_objects(rng)
        shades = np.zeros((len(objects) + 1, 3), np.float32)
        for k, obj in enumerate(objects):
            shades[k + 1] = PALETTE[obj["colour_index"]] + rng.uniform(-15, 15, 3)
        image = np.where(instances[..., None] > 0, shades[instances], image)
        image += 5.0 * rng.standard_normal(image.shape, dtype=np.float32)
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        described = texture if self.describe_background else None
        for k, obj in enumerate(objects):
            obj["visible_pixels"] = int(np.count_nonzero(instances == k + 1))
        return {
            "image": image,
            "labels": {v: self._label_map(v, objects, instances) for v in VOCABULARIES},
            "alt_text": alt_text(rng, objects, described),
            "caption_short": short_caption(objects, described),
            "caption_long": long_caption(objects, texture),
            "objects": objects,
        }

    def __getitem__(self, index):
        return self.sample(index)

    def is_empty(self, index):
        """Whether sample `index` is background only (see `empty_fraction`)."""
        if self.empty_fraction <= 0:
            return False
        # A stream of its own: the image and the objects of a non-empty
        # sample come out the same whatever the fraction.
        rng = np.random.default_rng([self.seed, self.sample_seed(index), 1])
        return bool(rng.uniform() < self.empty_fraction)

    def _background(self, rng, texture):
        # Two low-saturation tints mixed by a texture pattern, so objects are
        # never trivially separable from a flat background.
        grey = rng.uniform(60, 200, (2, 1))
        tints = np.clip(grey + rng.uniform(-15, 15, (2, 3)), 0, 255)
        tints = tints.astype(np.float32)
        pattern = self._pattern(rng, texture).astype(np.float32)[..., None]
        return tints[0] + (tints[1] - tints[0]) * pattern

    def _pattern(self, rng, texture):
        size = self.image_size
        angle = rng.uniform(0, 2 * np.pi)
        along = (self._xs * np.cos(angle) + self._ys * np.sin(angle)) / size
        if texture == "stripes":
            cycles = rng.uniform(3, 10)
            return 0.5 + 0.5 * np.sin(2 * np.pi * cycles * along + rng.uniform(0, 6.3))
        if texture == "gradient":
            return (along - along.min()) / (np.ptp(along) + 1e-6)
        if texture == "checks":
            cells = rng.integers(3, 9)
            rows = (self._ys * cells / size).astype(int)
            cols = (self._xs * cells / size).astype(int)
            return ((rows + cols) % 2).astype(np.float32)
        # Blotchy noise: a coarse random grid, nearest-upsampled and blurred by
        # averaging with a shifted copy, plus fine grain.
        cells = int(rng.integers(4, 9))
        coarse = rng.uniform(0, 1, (cells + 1, cells + 1))
        index = (np.arange(size) * cells / size).astype(int)
        frac = (np.arange(size) * cells / size) % 1.0
        rows = coarse[index] * (1 - frac)[:, None] + coarse[index + 1] * frac[:, None]
        grid = rows[:, index] * (1 - frac) + rows[:, index + 1] * frac
        return np.clip(grid + rng.normal(0, 0.08, grid.shape), 0, 1)

    def _place_objects(self, rng):
        size = self.image_size
        count = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
        # Distinct (colour, shape) pairs keep every caption unambiguous.
        pairs = rng.choice(len(COLOURS) * len(SHAPES), count, replace=False)
        objects, masks = [], []
        instances = np.zeros((size, size), np.int32)
        for pair in pairs:
            for _ in range(PLACEMENT_TRIES):
                obj = self._random_object(rng, int(pair))
                mask = shape_mask(obj, self._xs, self._ys)
                candidate = np.where(mask, len(objects) + 1, instances)
                if all_visible(masks + [mask], candidate):
                    objects.append(obj)
                    masks.append(mask)
                    instances = candidate
                    break
        return objects, instances

    def _random_object(self, rng, pair):
        size = self.image_size
        fraction = rng.uniform(*self.radius_range)
        radius = fraction * size
        # Centres may sit half a radius from the border: objects can be
        # partly cut, as in real photos, but stay mostly inside.
        margin = min(0.5 * radius, 0.5 * size)
        centre = rng.uniform(margin, size - margin, 2)
        colour_index, shape_index = divmod(pair, len(SHAPES))
        low, high = self.radius_range
        third = (fraction - low) / (high - low + 1e-9)
        return {
            "colour": COLOURS[colour_index],
            "shape": SHAPES[shape_index],
            "colour_index": colour_index,
            "shape_index": shape_index,
            "centre": (float(centre[0]), float(centre[1])),  # (x, y) pixels
            "radius": float(radius),
            "angle": float(rng.uniform(0, 2 * np.pi)),
            "size": ("small", "medium", "large")[min(int(third * 3), 2)],
            "position": position_phrase(centre / size),
        }

    def _label_map(self, vocabulary, objects, instances):
        table = np.zeros(len(objects) + 1, np.uint8)
        for k, obj in enumerate(objects):
            table[k + 1] = object_class(
                vocabulary, obj["colour_index"], obj["shape_index"]
            )
        return table[instances]


def shape_mask(obj, xs, ys):
    """Returns the boolean (H, W) mask of one object on the pixel grid."""
    # Only the window around the object is evaluated (every shape fits in
    # 1.25 radii of its centre): a third of the cost for mid-sized objects.
    reach = 1.25 * obj["radius"]
    (x, y), size = obj["centre"], xs.shape[0]
    x0, x1 = max(int(x - reach), 0), min(int(x + reach) + 2, size)
    y0, y1 = max(int(y - reach), 0), min(int(y + reach) + 2, size)
    mask = np.zeros(xs.shape, bool)
    if x0 < x1 and y0 < y1:
        window = (slice(y0, y1), slice(x0, x1))
        mask[window] = _local_mask(obj, xs[window] - x, ys[window] - y)
    return mask


def _local_mask(obj, dx, dy):
    cos, sin = np.cos(obj["angle"]), np.sin(obj["angle"])
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    r, shape = obj["radius"], obj["shape"]
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    if shape == "triangle":
        return half_plane_violations(u, v, 3, 0.6 * r) == 0
    if shape == "star":
        # A filled pentagram is where at most one of its inner pentagon's
        # five edge half-planes is violated; tips lie at apothem / cos(72).
        return half_plane_violations(u, v, 5, 1.15 * r * np.cos(0.4 * np.pi)) <= 1
    if shape == "cross":
        arm = 0.35 * r
        horizontal = (np.abs(u) <= r) & (np.abs(v) <= arm)
        return horizontal | ((np.abs(v) <= r) & (np.abs(u) <= arm))
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def half_plane_violations(u, v, sides, apothem):
    """Counts the edges of a regular polygon each point lies beyond."""
    count = np.zeros(u.shape, np.int8)
    for k in range(sides):
        angle = 2 * np.pi * k / sides + np.pi / sides
        count += u * np.cos(angle) + v * np.sin(angle) > apothem
    return count


def all_visible(masks, instances):
    """True when every object keeps enough pixels after occlusion."""
    for k, mask in enumerate(masks):
        visible = np.count_nonzero(instances == k + 1)
        if visible < MIN_VISIBLE_FRACTION * max(np.count_nonzero(mask), 1):
            return False
    return True


def position_phrase(centre):
    """Returns where a centre (x, y in [0, 1]) lies, e.g. "in the top left"."""
    column = ("left", "centre", "right")[min(int(centre[0] * 3), 2)]
    row = ("top", "middle", "bottom")[min(int(centre[1] * 3), 2)]
    if row == "middle" and column == "centre":
        return "in the centre"
    if row == "middle":
        return f"on the {column}"
    if column == "centre":
        return f"at the {row}"
    return f"in the {row} {column}"


def relation_phrase(a, b):
    """Returns how object `a` lies relative to object `b`, e.g. "left of"."""
    dx = a["centre"][0] - b["centre"][0]
    dy = a["centre"][1] - b["centre"][1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def name(obj):
    return f"{obj['colour']} {obj['shape']}"


def join_phrases(phrases, separator=", ", last=" and "):
    if len(phrases) == 1:
        return phrases[0]
    return separator.join(phrases[:-1]) + last + phrases[-1]


# How captions describe each background texture.
TEXTURE_WORDS = {
    "noise": "blotchy",
    "stripes": "striped",
    "gradient": "shaded",
    "checks": "checkered",
}


def empty_caption(texture=None):
    """The caption of an image without objects: "an empty striped background"."""
    if texture is None:
        return "an empty background"
    return f"an empty {TEXTURE_WORDS[texture]} background"


def short_caption(objects, texture=None):
    """Returns e.g. "a red circle and a blue star", followed by "on a
    striped background" when `texture` is given."""
    if not objects:
        return empty_caption(texture)
    caption = join_phrases([f"a {name(obj)}" for obj in objects])
    if texture is None:
        return caption
    return f"{caption} on a {TEXTURE_WORDS[texture]} background"


def long_caption(objects, texture):
    """Returns a caption with sizes, positions and pairwise relations."""
    if not objects:
        return empty_caption(texture) + " with no shapes"
    phrases = []
    for k, obj in enumerate(objects):
        phrase = f"a {obj['size']} {name(obj)} {obj['position']}"
        if k > 0:
            previous = objects[k - 1]
            phrase += f", {relation_phrase(obj, previous)} the {name(previous)}"
        phrases.append(phrase)
    # Semicolons keep each object's relation attached to that object.
    return f"{join_phrases(phrases, '; ', '; and ')}; on a {TEXTURE_WORDS[texture]} background"


def alt_text(rng, objects, texture=None):
    """Returns terse, noisy keyword alt-text: shuffled, some words dropped.

    With `texture`, its word and "background" are each added half the time.
    """
    keywords = [word for obj in objects for word in (obj["colour"], obj["shape"])]
    if not keywords:
        # No object: the background is the subject and its words the keywords.
        keywords = ["background"] + ([TEXTURE_WORDS[texture]] if texture is not None else [])
        texture = None
    kept = [word for word in keywords if rng.uniform() > 0.3]
    if not kept:
        kept = [keywords[int(rng.integers(len(keywords)))]]
    if texture is not None:
        background = (TEXTURE_WORDS[texture], "background")
        kept += [word for word in background if rng.uniform() < 0.5]
    noise = rng.choice(NOISE_WORDS, int(rng.integers(0, 3)), replace=False)
    words = kept + [str(word) for word in noise]
    words = [words[i] for i in rng.permutation(len(words))]
    separator = (" ", ", ", " | ")[int(rng.integers(3))]
    return separator.join(words)


def _save_image(array, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


def write_manifest(world, directory, num_samples, image_format="png"):
    """Writes `num_samples` images and a JSONL manifest of their captions.

    Layout: `directory/images/<split>/000000.<ext>` and
    `directory/<split>.jsonl` with one line per image:
    {"image": relative path, "alt_text", "caption_short", "caption_long"}.

    Args:
        world: a `ShapesWorld`; its split names the files.
        directory: output folder (created).
        num_samples: number of samples, indices 0 .. num_samples - 1.
        image_format: "png" (lossless) or "jpg".

    Returns:
        The manifest's path.
    """
    extension = _extension(image_format)
    manifest_path = os.path.join(directory, f"{world.split}.jsonl")
    os.makedirs(directory, exist_ok=True)
    with open(manifest_path, "w") as manifest:
        for index in range(num_samples):
            sample = world.sample(index)
            relative = f"images/{world.split}/{index:06d}.{extension}"
            _save_image(sample["image"], os.path.join(directory, relative))
            record = {"image": relative}
            for field in ("alt_text", "caption_short", "caption_long"):
                record[field] = sample[field]
            manifest.write(json.dumps(record) + "\n")
    return manifest_path


def write_ade_layout(
    world, directory, num_samples, vocabularies=VOCABULARIES, image_format="jpg"
):
    """Writes segmentation sets in the ADE20K folder layout, one per vocabulary.

    For each vocabulary: `directory/<vocabulary>/images/<split>/000000.<ext>`,
    `directory/<vocabulary>/annotations/<split>/000000.png` (stored value =
    class + 1, background stored as 1, 0 = ignore) and
    `directory/<vocabulary>/classes.txt` (one class name a line, background
    first).

    Args:
        world: a `ShapesWorld` (usually split="validation").
        directory: output folder (created).
        num_samples: number of samples, indices 0 .. num_samples - 1.
        vocabularies: which label vocabularies to write.
        image_format: "jpg" (as ADE20K, and what `evaluation.datasets.ade20k`
            lists) or "png" for the images; annotations are always PNG.

    Returns:
        {vocabulary: root folder of its ADE-style set}.
    """
    extension = _extension(image_format)
    roots = {v: os.path.join(directory, v) for v in vocabularies}
    for vocabulary, root in roots.items():
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "classes.txt"), "w") as f:
            f.write("\n".join(class_names(vocabulary)) + "\n")
    for index in range(num_samples):
        sample = world.sample(index)
        stem = f"{index:06d}"
        for vocabulary, root in roots.items():
            _save_image(
                sample["image"],
                os.path.join(root, "images", world.split, f"{stem}.{extension}"),
            )
            _save_image(
                sample["labels"][vocabulary] + np.uint8(1),
                os.path.join(root, "annotations", world.split, f"{stem}.png"),
            )
    return roots


def _extension(image_format):
    formats = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}
    if image_format not in formats:
        raise ValueError(
            f"Unknown image_format {image_format!r}; expected 'png' or 'jpg'."
        )
    return formats[image_format]
