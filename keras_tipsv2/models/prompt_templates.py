"""Prompt templates for zero-shot use and the class text embeddings built on them."""

from keras import ops

from keras_tipsv2.layers.functional import l2_normalize

# The 9 ImageNet templates kept by TCL, used by the TIPS zero-shot
# segmentation notebook (google-deepmind/tips,
# `pytorch/TIPS_zeroshot_segmentation.ipynb`), in its order.
TCL_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of many {}.",
    "a photo of {}s.",
)

# The 80 ImageNet templates of CLIP (Radford et al. 2021, the
# "Prompt_Engineering_for_ImageNet" notebook), in their original order.
CLIP_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


NAMED_TEMPLATES = {"tcl": TCL_TEMPLATES, "imagenet": CLIP_IMAGENET_TEMPLATES}


def resolve_templates(templates):
    """A template list from a name ("tcl": the 9 of the zero-shot
    segmentation protocol, "imagenet": CLIP's 80) or a list as it is."""
    if isinstance(templates, str):
        if templates not in NAMED_TEMPLATES:
            raise ValueError(
                f"templates must be one of {sorted(NAMED_TEMPLATES)} or a list of "
                f"strings with one '{{}}' each; got {templates!r}."
            )
        return NAMED_TEMPLATES[templates]
    return templates


def fill_templates(class_names, templates):
    """All prompts, class-major: the prompt for (class c, template t) is at
    index c * len(templates) + t."""
    if isinstance(class_names, str) or not len(class_names):
        raise ValueError(
            "class_names must be a non-empty list of strings; got "
            f"{class_names!r}."
        )
    if isinstance(templates, str) or not len(templates):
        raise ValueError(
            f"templates must be a non-empty list of strings; got {templates!r}."
        )
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(
                "Each template needs exactly one '{}' for the class name; "
                f"got {template!r}."
            )
    return [t.format(name) for name in class_names for t in templates]


def class_text_embeddings(
    backbone, tokenizer, class_names, templates=TCL_TEMPLATES, batch_size=256
):
    """One unit-norm text embedding per class, by prompt ensembling.

    The official protocol (the TIPS zero-shot notebook's, also CLIP's): fill
    every template with the class name, encode each prompt with the text
    tower, L2-normalise each, average over the templates and L2-normalise
    the average.

    Args:
        backbone: a `TIPSv2Backbone` (anything with `encode_text`).
        tokenizer: a `TIPSv2Tokenizer`, or any callable mapping a list of
            strings to {"token_ids", "padding_mask"}.
        class_names: list of C class names, used verbatim.
        templates: list of T templates with one "{}" each.
        batch_size: prompts encoded per text-tower call.

    Returns:
        A float tensor of shape (C, D) with unit rows.
    """
    prompts = fill_templates(class_names, templates)
    chunk_size = min(batch_size, len(prompts))
    # Pad the last chunk with empty prompts so every text-tower call has the
    # same shape (one compilation per shape on JAX); the padding is dropped.
    padded = prompts + [""] * (-len(prompts) % chunk_size)
    chunks = []
    for start in range(0, len(padded), chunk_size):
        tokens = tokenizer(padded[start : start + chunk_size])
        chunks.append(
            backbone.encode_text(tokens["token_ids"], tokens["padding_mask"])
        )
    embeddings = l2_normalize(ops.concatenate(chunks, axis=0)[: len(prompts)])
    embeddings = ops.reshape(
        embeddings, (len(class_names), len(templates), -1)
    )
    return l2_normalize(ops.mean(embeddings, axis=1))
