"""Readers for the segmentation benchmarks' folder layouts, and their classes.

Each reader returns a `SegmentationDataset`: the (image, annotation) file
pairs plus how the raw annotation values map to scored classes. Images are
read lazily, one at a time, as uint8 RGB; annotations as raw integer maps
(palette PNGs give their indices).
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from keras_tipsv2.models.tipsv2_images import read_image_file

# The standard ADE20K-150 order (SceneParsing `objectInfo150`), as the TIPS
# zero-shot notebook uses it verbatim.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food",
    "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

# Pascal VOC 2012 in label order (0 = background), spelled as prompts
# ("aeroplane" -> "airplane", "tvmonitor" -> "tv monitor"), as the
# zero-shot literature (MaskCLIP, TCL) does.
VOC_CLASSES = (
    "background", "airplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "dining table", "dog", "horse",
    "motorbike", "person", "potted plant", "sheep", "sofa", "train",
    "tv monitor",
)  # fmt: skip

# Pascal Context 59 in label order (labels 1..59 of the usual conversion,
# 0 = background), spelled as prompts.
CONTEXT59_CLASSES = (
    "airplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird",
    "boat", "book", "bottle", "building", "bus", "cabinet", "car", "cat",
    "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate",
    "platform", "potted plant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train",
    "tree", "truck", "tv monitor", "wall", "water", "window", "wood",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SegmentationDataset:
    """Image/annotation pairs of a benchmark and how to score them.

    Attributes:
        name: e.g. "ade20k".
        class_names: the scored classes, in class-id order.
        pairs: list of (image_path, annotation_path).
        ignore_labels: raw annotation values that are not scored.
        label_offset: added to the scored raw values to get class ids.
        has_background: class 0 is "background", a stuff-less catch-all that
            a zero-shot model predicts by threshold rather than by prompt.
    """

    name: str
    class_names: tuple
    pairs: list
    ignore_labels: tuple
    label_offset: int = 0
    has_background: bool = False

    def __len__(self):
        return len(self.pairs)

    def __iter__(self):
        for image_path, annotation_path in self.pairs:
            yield read_image_file(image_path), read_annotation(annotation_path)


def read_annotation(path):
    """Raw integer label map (H, W); palette PNGs give their indices."""
    with Image.open(path) as annotation:
        return np.asarray(annotation).astype("int64")


def _require_dir(path, what):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Expected the {what} folder at {path}.")


def _pairs_from_ids(ids, image_dir, annotation_dir):
    pairs = [
        (os.path.join(image_dir, i + ".jpg"), os.path.join(annotation_dir, i + ".png"))
        for i in ids
    ]
    missing = [p for pair in pairs for p in pair if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} listed files are missing, e.g. {missing[0]}."
        )
    return pairs


def _read_ids(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Expected the split list at {path}.")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def ade20k(root, split="validation"):
    """ADEChallengeData2016: images/<split>/*.jpg + annotations/<split>/*.png.

    Raw 0 ("other") and 255 are ignored; 1..150 become classes 0..149.
    """
    image_dir = os.path.join(root, "images", split)
    annotation_dir = os.path.join(root, "annotations", split)
    _require_dir(image_dir, "ADE20K images")
    _require_dir(annotation_dir, "ADE20K annotations")
    ids = sorted(f[:-4] for f in os.listdir(image_dir) if f.endswith(".jpg"))
    return SegmentationDataset(
        name="ade20k",
        class_names=ADE20K_CLASSES,
        pairs=_pairs_from_ids(ids, image_dir, annotation_dir),
        ignore_labels=(0, 255),
        label_offset=-1,
    )


def pascal_voc(root, split="val", include_background=True):
    """VOC2012: JPEGImages, SegmentationClass, ImageSets/Segmentation/<split>.txt.

    With `include_background` the 21 classes are scored (VOC21) and 255 is
    ignored; without, background is ignored too and 1..20 become 0..19 (VOC20).
    """
    ids = _read_ids(os.path.join(root, "ImageSets", "Segmentation", split + ".txt"))
    pairs = _pairs_from_ids(
        ids, os.path.join(root, "JPEGImages"), os.path.join(root, "SegmentationClass")
    )
    if include_background:
        return SegmentationDataset(
            "voc", VOC_CLASSES, pairs, ignore_labels=(255,), has_background=True
        )
    return SegmentationDataset(
        "voc20", VOC_CLASSES[1:], pairs, ignore_labels=(0, 255), label_offset=-1
    )


def pascal_context(root, split="val", include_background=False):
    """Pascal Context (VOC2010): JPEGImages, SegmentationClassContext,
    ImageSets/SegmentationContext/<split>.txt (the mmseg conversion, where
    0 = background and 1..59 the classes).

    Without `include_background` 0 is ignored and 1..59 become 0..58 (PC59);
    with it background is class 0 of 60 (PC60).
    """
    ids = _read_ids(
        os.path.join(root, "ImageSets", "SegmentationContext", split + ".txt")
    )
    pairs = _pairs_from_ids(
        ids,
        os.path.join(root, "JPEGImages"),
        os.path.join(root, "SegmentationClassContext"),
    )
    if include_background:
        return SegmentationDataset(
            "context60",
            ("background", *CONTEXT59_CLASSES),
            pairs,
            ignore_labels=(255,),
            has_background=True,
        )
    return SegmentationDataset(
        "context", CONTEXT59_CLASSES, pairs, ignore_labels=(0, 255), label_offset=-1
    )


DATASETS = {
    "ade20k": ade20k,
    "voc": pascal_voc,
    "voc20": lambda root: pascal_voc(root, include_background=False),
    "context": pascal_context,
    "context60": lambda root: pascal_context(root, include_background=True),
}


def load_segmentation_dataset(name, root, class_names=None):
    """One of DATASETS by name, read from the folder `root`.

    `class_names` replaces the benchmark's list, e.g. for a custom set in the
    ADE20K layout (such as ShapesWorld's `classes.txt`); its length sets the
    number of scored classes, and a first name "background" marks class 0 as
    background.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
    dataset = DATASETS[name](root)
    if class_names is None:
        return dataset
    class_names = tuple(class_names)
    if not class_names:
        raise ValueError("class_names must not be empty.")
    return dataclasses.replace(
        dataset,
        class_names=class_names,
        has_background=class_names[0] == "background",
    )
