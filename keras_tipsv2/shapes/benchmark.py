"""The ShapesWorld held-out benchmark: how well patches and CLS tokens align with text.

One call scores a backbone on held-out ShapesWorld images, for each class
vocabulary (colour, shape, colour_shape), beside the numbers that give it a
scale:

* zero-shot segmentation mIoU with the TIPS protocol (values trick, residual
  and MLP kept) and with MaskCLIP's no-residual variant, in "whole" mode: at
  64-112 px one window is the whole image, so the segmenter's short side and
  window are set to the image size;
* the all-background mIoU (predict class 0 everywhere), the floor;
* the patch-resolution oracle mIoU, the ceiling for anything that predicts one
  label per patch: each patch takes its majority class (area-weighted, ties to
  the lower class id), and the one-hot patch scores go through the same
  bilinear upsampling and argmax as the segmenter's cosines;
* zero-shot classification accuracy from CLS_1 and CLS_2 (see
  `present_class_hits`) with its chance level;
* image->text and text->image recall@1 from CLS_1 and CLS_2 against the short
  captions (see `caption_relevance`).

The floor and the ceiling matter: with
objects of two or three patches even a perfect patch classifier is far from
mIoU 1, and an untrained model scores about the floor.
"""

import os

import numpy as np
from keras import ops
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from keras_tipsv2.shapes.world import VOCABULARIES
from keras_tipsv2.shapes.world import class_names
from keras_tipsv2.shapes.world import object_class
from keras_tipsv2.evaluation.miou import SegmentationScore
from keras_tipsv2.evaluation.pictures import segmentation_picture
from keras_tipsv2.evaluation.retrieval import cosine_similarities
from keras_tipsv2.models.prompt_templates import class_text_embeddings
from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter
from keras_tipsv2.models.tipsv2_images import image_as_array, resize_bicubic, upsampled_scores
from keras_tipsv2.evaluation.pca import pca_image

VALUES_TRICKS = ("values", "values_no_residual")
CLS_NAMES = ("cls_1", "cls_2")


# --- Floor and ceiling ---------------------------------------------------


def area_weights(size, cells):
    """(cells, size) overlap of each of `cells` equal cells with each pixel.

    Row i is how much of every pixel [y, y + 1) falls in cell i, whose
    extent is [i * size / cells, (i + 1) * size / cells); rows sum to the
    cell's width in pixels. Exact for sizes that are not multiples.
    """
    edges = np.arange(cells + 1) * size / cells
    low = np.maximum(edges[:-1, None], np.arange(size)[None, :])
    high = np.minimum(edges[1:, None], np.arange(size)[None, :] + 1)
    return np.maximum(high - low, 0.0)


def patch_majority_labels(labels, grid, num_classes):
    """The (gh, gw) label of each patch: its area-weighted majority class.

    Ties go to the lower class id (background first).

    Args:
        labels: (H, W) integer class map in [0, num_classes).
        grid: (gh, gw) patches along each side.
        num_classes: number of classes.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be an (H, W) map; got shape {labels.shape}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}).")
    rows = area_weights(labels.shape[0], grid[0])
    columns = area_weights(labels.shape[1], grid[1])
    counts = np.zeros((*grid, num_classes))
    # Only the few classes present cost anything (a one-hot map of every
    # class made this the benchmark's slowest step).
    for c in np.unique(labels):
        counts[..., c] = rows @ (labels == c) @ columns.T
    return np.argmax(counts, axis=-1)


def upsampled_labels(patch_scores, size):
    """Argmax of (h, w, C) scores bilinearly resized to `size`, the segmenter's rule."""
    scores = upsampled_scores(patch_scores, tuple(size))
    return ops.convert_to_numpy(ops.argmax(scores, axis=-1)).astype("int32")


def patch_oracle_labels(labels, grid, num_classes):
    """The best map a one-label-per-patch predictor gets through the protocol.

    Each patch's majority class as one-hot scores, upsampled to the label
    map's size exactly as `TIPSv2ZeroShotSegmenter` upsamples its cosines.
    """
    patches = patch_majority_labels(labels, grid, num_classes)
    one_hot = np.eye(num_classes, dtype="float32")[patches]
    return upsampled_labels(one_hot, np.asarray(labels).shape)


def patch_grid(image_size, patch_size):
    """Patches per side; the segmenter resizes a partial patch up to a whole one."""
    return -(-image_size // patch_size)


# --- Classification and retrieval ----------------------------------------


def top1_hits(similarities, relevant):
    """(N,) bool: is row i's most similar column a relevant one?

    Ties are pessimistic (a relevant column tied with an irrelevant one is a
    miss), so a constant model scores 0, not chance.
    """
    similarities = np.asarray(similarities, "float64")
    relevant = np.asarray(relevant, bool)
    best_relevant = np.where(relevant, similarities, -np.inf).max(axis=1)
    best_irrelevant = np.where(relevant, -np.inf, similarities).max(axis=1)
    return best_relevant > best_irrelevant


def present_classes(sample, vocabulary):
    """The object classes (no background) of the objects a sample shows."""
    return {
        object_class(vocabulary, obj["colour_index"], obj["shape_index"])
        for obj in sample["objects"]
    }


def present_class_hits(similarities, samples, vocabulary):
    """Zero-shot classification: (N,) bool, one per image.

    The prediction is the object class (background excluded) whose prompt
    embedding is most similar to the image's CLS token; it is right when an
    object of that class is in the image. For single-object images this is
    ordinary top-1 accuracy.

    Args:
        similarities: (N, C - 1) cosines with the classes 1 .. C - 1.
        samples: the N ShapesWorld samples.
        vocabulary: which label vocabulary the classes come from.
    """
    num_objects = len(class_names(vocabulary)) - 1
    relevant = np.zeros((len(samples), num_objects), bool)
    for row, sample in enumerate(samples):
        relevant[row, [c - 1 for c in present_classes(sample, vocabulary)]] = True
    return top1_hits(similarities, relevant)


def classification_chance(samples, vocabulary):
    """Expected accuracy of a uniformly random class guess."""
    num_objects = len(class_names(vocabulary)) - 1
    return float(
        np.mean([len(present_classes(s, vocabulary)) / num_objects for s in samples])
    )


def object_set(sample):
    """What a short caption says: the set of (colour, shape) objects."""
    return frozenset((obj["colour"], obj["shape"]) for obj in sample["objects"])


def caption_relevance(samples):
    """The retrieval texts and which images each one describes.

    Short captions name only the objects, so held-out images often share
    one (up to word order). Each distinct object set contributes one text
    (the short caption of its first image), relevant to every image showing
    exactly those objects: a model is not asked to tell identical
    descriptions apart.

    Returns:
        (texts, relevant) with relevant[i, t] True when text t describes image i.
    """
    firsts = {}
    for index, sample in enumerate(samples):
        firsts.setdefault(object_set(sample), index)
    keys = list(firsts)
    texts = [samples[firsts[key]]["caption_short"] for key in keys]
    relevant = np.array([[object_set(s) == key for key in keys] for s in samples])
    return texts, relevant


# --- The benchmark --------------------------------------------------------


def model_input(image, image_size):
    """A float [0, 1] (S, S, 3) image as the segmenter prepares it."""
    if image.shape[:2] != (image_size, image_size):
        image = resize_bicubic(image, (image_size, image_size))
    return image_as_array(image)


def cls_tokens(backbone, images, batch_size):
    """(N, num_cls, D) numpy CLS tokens of (N, S, S, 3) float images.

    The last batch is padded to the full batch size so that every
    backbone call has the same shape (one compilation on JAX).
    """
    size = min(batch_size, len(images))
    padded = np.concatenate([images, images[: -len(images) % size]])
    batches = [
        ops.convert_to_numpy(
            backbone.encode_images(padded[start : start + size])["cls_tokens"]
        )
        for start in range(0, len(padded), size)
    ]
    return np.concatenate(batches)[: len(images)].astype("float32")


def vocabulary_columns(vocabularies):
    """(all class names without repeats, {vocabulary: column of each class}).

    Every vocabulary shares one text encoding of "background".
    """
    names = []
    for vocabulary in vocabularies:
        names.extend(n for n in class_names(vocabulary) if n not in names)
    columns = {
        v: np.array([names.index(n) for n in class_names(v)]) for v in vocabularies
    }
    return names, columns


def segmentation_results(segmenter, samples, columns, image_size):
    """{vocabulary: {"values", "values_no_residual", "background", "oracle"}} mIoU.

    The segmenter holds every vocabulary's classes at once; in "whole" mode
    the scores are raw per-class cosines and the bilinear upsampling acts on
    each class alone, so the argmax over one vocabulary's columns is exactly
    what a segmenter holding only that vocabulary would predict.
    """
    grid = (patch_grid(image_size, segmenter.backbone.vision_patch_size),) * 2
    kinds = (*VALUES_TRICKS, "background", "oracle")
    scores = {
        v: {kind: SegmentationScore(len(cols)) for kind in kinds}
        for v, cols in columns.items()
    }
    for sample in samples:
        for trick in VALUES_TRICKS:
            result = segmenter.segment(sample["image"], mode="whole", values_trick=trick)
            for vocabulary, cols in columns.items():
                predicted = np.argmax(result["scores"][..., cols], axis=-1)
                scores[vocabulary][trick].update(predicted, sample["labels"][vocabulary])
        for vocabulary, cols in columns.items():
            labels = sample["labels"][vocabulary]
            scores[vocabulary]["background"].update(np.zeros_like(labels), labels)
            oracle = patch_oracle_labels(labels, grid, len(cols))
            scores[vocabulary]["oracle"].update(oracle, labels)
    return {
        vocabulary: {
            "num_classes": len(columns[vocabulary]),
            **{name: score.mean_iou() for name, score in by_name.items()},
        }
        for vocabulary, by_name in scores.items()
    }


def classification_results(tokens, class_embeddings, samples, columns):
    """{vocabulary: {"cls_1", "cls_2", "chance"}} zero-shot accuracies."""
    results = {}
    for vocabulary, cols in columns.items():
        objects = ops.take(class_embeddings, cols[1:], axis=0)
        results[vocabulary] = {
            name: float(
                np.mean(present_class_hits(
                    cosine_similarities(tokens[:, k], objects), samples, vocabulary
                ))
            )
            for k, name in enumerate(CLS_NAMES)
        }
        results[vocabulary]["chance"] = classification_chance(samples, vocabulary)
    return results


def retrieval_results(backbone, tokenizer, tokens, samples):
    """{"cls_1": {...}, "cls_2": {...}, "num_texts"} recall@1 both ways."""
    texts, relevant = caption_relevance(samples)
    # One template "{}" makes the prompt the caption itself: the text tower's
    # unit-norm embedding of each caption, in fixed-shape chunks.
    text_embeddings = class_text_embeddings(backbone, tokenizer, texts, ["{}"])
    results = {"num_texts": len(texts)}
    for k, name in enumerate(CLS_NAMES):
        similarities = cosine_similarities(tokens[:, k], text_embeddings)
        results[name] = {
            "image_to_text@1": float(np.mean(top1_hits(similarities, relevant))),
            "text_to_image@1": float(np.mean(top1_hits(similarities.T, relevant.T))),
        }
    return results


def _checked_vocabularies(vocabularies):
    vocabularies = tuple(vocabularies)
    unknown = [v for v in vocabularies if v not in VOCABULARIES]
    if unknown or not vocabularies:
        raise ValueError(
            f"vocabularies must be a non-empty subset of {VOCABULARIES}; got {vocabularies}."
        )
    return vocabularies


def shapes_segmenter(backbone, tokenizer, image_size):
    """A whole-image segmenter for tiny images: short side and window = the size."""
    return TIPSv2ZeroShotSegmenter(
        backbone,
        tokenizer,
        short_side=image_size,
        window_size=image_size,
        window_stride=image_size,
    )


def evaluate_on_shapes(
    backbone,
    tokenizer,
    world,
    num_images=100,
    image_size=None,
    templates="tcl",
    vocabularies=VOCABULARIES,
    batch_size=32,
):
    """Scores a backbone on held-out ShapesWorld images.

    Args:
        backbone: a `TIPSv2Backbone` (or anything with `encode_images`,
            `encode_text` and `vision_patch_size`).
        tokenizer: a `TIPSv2Tokenizer` or any callable with its contract.
        world: the `ShapesWorld` to draw from, normally split="validation";
            samples 0 .. num_images - 1 are used.
        num_images: how many images.
        image_size: side the model sees (bicubic resize); defaults to the
            world's size. Labels are scored at the world's size.
        templates: "tcl", "imagenet" or a list of templates with one "{}",
            for the class prompts of segmentation and classification.
        vocabularies: which label vocabularies to score.
        batch_size: images per backbone call for the CLS tokens.

    Returns:
        A JSON-serialisable dict:
        {"num_images", "image_size", "label_size", "patch_size", "split",
         "templates",
         "segmentation": {vocabulary: {"num_classes", "values",
             "values_no_residual", "background", "oracle"}},   # mIoU in [0, 1]
         "classification": {vocabulary: {"cls_1", "cls_2", "chance"}},
         "retrieval": {"num_texts", "cls_1": {"image_to_text@1",
             "text_to_image@1"}, "cls_2": {...}}}
    """
    vocabularies = _checked_vocabularies(vocabularies)
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1; got {num_images}.")
    image_size = int(image_size or world.image_size)
    samples = [world.sample(index) for index in range(num_images)]
    names, columns = vocabulary_columns(vocabularies)
    segmenter = shapes_segmenter(backbone, tokenizer, image_size)
    segmenter.set_classes(names, templates)
    images = np.stack([model_input(s["image"], image_size) for s in samples])
    tokens = cls_tokens(backbone, images, batch_size)
    return {
        "num_images": num_images,
        "image_size": image_size,
        "label_size": world.image_size,
        "patch_size": int(backbone.vision_patch_size),
        "split": world.split,
        "templates": templates if isinstance(templates, str) else list(templates),
        "segmentation": segmentation_results(segmenter, samples, columns, image_size),
        "classification": classification_results(
            tokens, segmenter.class_embeddings, samples, columns
        ),
        "retrieval": retrieval_results(backbone, tokenizer, tokens, samples),
    }


# --- Report and pictures --------------------------------------------------


def _percent(value):
    return f"{100 * value:.1f}"


def markdown_report(results, title="ShapesWorld held-out evaluation"):
    """A short Markdown report of `evaluate_on_shapes` results (numbers in %)."""
    lines = [
        f"## {title}",
        "",
        f"{results['num_images']} held-out images ({results['split']} split) at "
        f"{results['image_size']} px, patch {results['patch_size']}, "
        f"templates: {_templates_label(results['templates'])}.",
        "",
        "**Zero-shot segmentation mIoU** (whole image; floor = all background, "
        "ceiling = patch-resolution oracle)",
        "",
        "| vocabulary | classes | values (TIPS) | values, no residual "
        "| all background | patch oracle |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for vocabulary, row in results["segmentation"].items():
        lines.append(
            f"| {vocabulary} | {row['num_classes']} | {_percent(row['values'])} | "
            f"{_percent(row['values_no_residual'])} | {_percent(row['background'])} | "
            f"{_percent(row['oracle'])} |"
        )
    lines += [
        "",
        "**Zero-shot classification accuracy** (top-1 class is one of the "
        "objects shown)",
        "",
        "| vocabulary | CLS_1 | CLS_2 | chance |",
        "|---|---:|---:|---:|",
    ]
    for vocabulary, row in results["classification"].items():
        lines.append(
            f"| {vocabulary} | {_percent(row['cls_1'])} | {_percent(row['cls_2'])} | "
            f"{_percent(row['chance'])} |"
        )
    retrieval = results["retrieval"]
    lines += [
        "",
        f"**Retrieval recall@1** against {retrieval['num_texts']} distinct short "
        "captions",
        "",
        "| direction | CLS_1 | CLS_2 |",
        "|---|---:|---:|",
    ]
    directions = (("image_to_text@1", "image → text"), ("text_to_image@1", "text → image"))
    for key, label in directions:
        lines.append(
            f"| {label} | {_percent(retrieval['cls_1'][key])} | "
            f"{_percent(retrieval['cls_2'][key])} |"
        )
    return "\n".join(lines) + "\n"


def comparison_rows(results):
    """[(label, value)] of one `evaluate_on_shapes` result, the numbers a
    comparison of models lines up (scores in [0, 1])."""
    rows = []
    for vocabulary, row in results["segmentation"].items():
        rows.append((f"mIoU {vocabulary}, values (TIPS)", row["values"]))
        rows.append((f"mIoU {vocabulary}, values, no residual", row["values_no_residual"]))
    for vocabulary, row in results["classification"].items():
        rows.append((f"classification {vocabulary}, CLS_1", row["cls_1"]))
        rows.append((f"classification {vocabulary}, CLS_2", row["cls_2"]))
    for token in CLS_NAMES:
        for key, label in (("image_to_text@1", "image → text"), ("text_to_image@1", "text → image")):
            rows.append((f"R@1 {label}, {token.upper()}", results["retrieval"][token][key]))
    return rows


def markdown_comparison(named_results, title="ShapesWorld held-out comparison"):
    """A Markdown table of several models' `evaluate_on_shapes` results on
    the same images (numbers in %), the first model's lead over the second
    in the last column, then the floors and ceilings.

    Args:
        named_results: {name: results}, at least two, all scored on the same
            held-out images (same split, count and label size).
        title: the heading.

    Returns:
        The Markdown text.
    """
    names = list(named_results)
    if len(names) < 2:
        raise ValueError(f"markdown_comparison needs at least two models; got {names}.")
    first = named_results[names[0]]
    keys = ("split", "num_images", "label_size", "templates")
    for name in names[1:]:
        other = named_results[name]
        if any(other[k] != first[k] for k in keys):
            raise ValueError(
                f"{name!r} was scored on other images than {names[0]!r}: "
                f"{ {k: other[k] for k in keys} } vs { {k: first[k] for k in keys} }."
            )
    columns = [comparison_rows(named_results[n]) for n in names]
    lines = [
        f"## {title}",
        "",
        f"{first['num_images']} held-out images ({first['split']} split) at "
        f"{first['label_size']} px, templates: {_templates_label(first['templates'])}.",
        "",
        "| | " + " | ".join(names) + f" | {names[0]} − {names[1]} |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for index, (label, _) in enumerate(columns[0]):
        values = [column[index][1] for column in columns]
        cells = [_percent(v) for v in values] + [f"{100 * (values[0] - values[1]):+.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    floors = ", ".join(
        f"{v} {_percent(r['background'])} / {_percent(r['oracle'])}"
        for v, r in first["segmentation"].items()
    )
    chance = ", ".join(
        f"{v} {_percent(r['chance'])}" for v, r in first["classification"].items()
    )
    lines += [
        "",
        f"All-background floor / patch oracle mIoU: {floors}. Classification "
        f"chance: {chance}. Retrieval among {first['retrieval']['num_texts']} "
        "distinct short captions.",
    ]
    return "\n".join(lines) + "\n"


def _templates_label(templates):
    if isinstance(templates, str):
        return templates
    return f"{len(templates)} custom"


def enlarged(image, factor):
    """Nearest-neighbour upscaling by an integer factor (keeps patches square)."""
    return np.repeat(np.repeat(np.asarray(image), factor, axis=0), factor, axis=1)


def titled(picture, title, height=16):
    """A PIL picture under a one-line caption on white."""
    canvas = Image.new("RGB", (picture.width, picture.height + height), "white")
    ImageDraw.Draw(canvas).text((4, 2), title, fill="black", font=ImageFont.load_default())
    canvas.paste(picture, (0, height))
    return canvas


def stacked(pictures, gap=4):
    """PIL pictures top to bottom on white."""
    width = max(p.width for p in pictures)
    height = sum(p.height for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height + gap
    return canvas


def save_pictures(
    backbone,
    tokenizer,
    world,
    out_dir,
    index=0,
    vocabulary="colour",
    image_size=None,
    templates="tcl",
    display_size=224,
):
    """Writes a PCA feature picture and a segmentation overlay of one image.

    `pca.png`: the image beside the first three principal components of its
    patch tokens. `segmentation.png`: the zero-shot prediction (TIPS values
    trick, whole image) over the image, above the ground truth, each with a
    title and a legend. Both are enlarged (nearest) to about `display_size` pixels.

    Args:
        backbone, tokenizer: as in `evaluate_on_shapes`.
        world: a held-out `ShapesWorld`.
        out_dir: folder to write into (created).
        index: which sample of `world`.
        vocabulary: the class vocabulary of the overlay.
        image_size: side the model sees; defaults to the world's size.
        templates: as in `evaluate_on_shapes`.
        display_size: approximate side of the pictures' images.

    Returns:
        {"pca": path, "segmentation": path}.
    """
    _checked_vocabularies([vocabulary])
    image_size = int(image_size or world.image_size)
    sample = world.sample(index)
    factor = max(1, round(display_size / world.image_size))
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "pca": os.path.join(out_dir, "pca.png"),
        "segmentation": os.path.join(out_dir, "segmentation.png"),
    }
    pca = pca_image(backbone, sample["image"], short_side=image_size)
    pca.resize((pca.width * factor, pca.height * factor), Image.NEAREST).save(paths["pca"])
    segmenter = shapes_segmenter(backbone, tokenizer, image_size)
    names = class_names(vocabulary)
    segmenter.set_classes(names, templates)
    predicted = segmenter.segment(sample["image"], mode="whole")["labels"]
    truth = sample["labels"][vocabulary]
    # Number only the classes shown, in both rows alike: the picture palette
    # has 20 colours and would give two of the 26 colour_shape classes one.
    shown, codes = np.unique(np.stack([predicted, truth]), return_inverse=True)
    codes = codes.reshape(2, *truth.shape)
    image = enlarged(sample["image"], factor)
    rows = [
        titled(
            segmentation_picture(
                image, enlarged(labels, factor), [names[c] for c in shown]
            ),
            title,
        )
        for title, labels in (
            (f"zero-shot prediction ({vocabulary} classes)", codes[0]),
            ("ground truth", codes[1]),
        )
    ]
    stacked(rows).save(paths["segmentation"])
    return paths
