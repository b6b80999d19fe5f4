"""Zero-shot segmentation benchmark loop: segment each image, score with mIoU."""

import itertools

from keras_tipsv2.evaluation.miou import SegmentationScore


def set_dataset_classes(segmenter, dataset, templates="tcl", background_threshold=None):
    """Gives the segmenter the dataset's classes, in its label order.

    For datasets whose class 0 is "background" (VOC21, PC60) the background
    comes from `background_threshold` (TCL's constant-score rule) when one is
    given, else from prompting "background" like any other class.
    """
    names = list(dataset.class_names)
    if dataset.has_background and background_threshold is not None:
        segmenter.set_classes(names[1:], templates, background_threshold)
    else:
        segmenter.set_classes(names, templates)


def evaluate_segmentation(segmenter, dataset, mode="slide", values_trick="values",
                          max_images=None, progress=False):
    """Runs `segmenter` over `dataset` and returns the filled SegmentationScore.

    Predictions are made at each annotation's size, as the reference does.
    """
    score = SegmentationScore(
        len(dataset.class_names), dataset.ignore_labels, dataset.label_offset
    )
    total = len(dataset) if max_images is None else min(max_images, len(dataset))
    samples = itertools.islice(iter(dataset), total)
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, total=total, desc="Segmentation", unit="img")
    for image, annotation in samples:
        result = segmenter.segment(
            image, mode=mode, values_trick=values_trick, output_size=annotation.shape
        )
        score.update(result["labels"], annotation)
    return score


def iou_table(class_names, class_iou):
    """A two-column text table of per-class IoU in percent ('-' if unscored)."""
    width = max(len(n) for n in class_names)
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in zip(class_names, class_iou):
        value = "   -" if iou != iou else f"{100 * iou:5.2f}"
        lines.append(f"{name:<{width}}  {value}")
    return "\n".join(lines)
