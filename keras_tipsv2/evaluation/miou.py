"""Mean intersection-over-union from a confusion matrix, as the TIPS zero-shot
segmentation evaluation (google-deepmind/tips) scores it."""

import numpy as np

IGNORE = -1


def remap_labels(labels, ignore_labels=(), label_offset=0):
    """Raw annotation values -> class ids, with IGNORE (-1) where unscored.

    `ignore_labels` are raw values; the others are shifted by `label_offset`
    (ADE20K: ignore 0 and 255, offset -1, so raw 1..150 become 0..149).
    """
    labels = np.asarray(labels).astype("int64")
    ignored = np.isin(labels, np.asarray(list(ignore_labels), dtype="int64"))
    return np.where(ignored, IGNORE, labels + label_offset)


def confusion_matrix(predictions, labels, num_classes, ignore_labels=(), label_offset=0):
    """(num_classes, num_classes) counts: row = true class, column = predicted.

    Args:
        predictions: int array of predicted class ids in [0, num_classes).
        labels: raw annotation of the same shape.
        num_classes: number of scored classes.
        ignore_labels: raw annotation values that are not scored.
        label_offset: added to the raw values that are scored.
    """
    predictions = np.asarray(predictions).astype("int64")
    truth = remap_labels(labels, ignore_labels, label_offset)
    if predictions.shape != truth.shape:
        raise ValueError(
            f"predictions {predictions.shape} and labels {truth.shape} differ in shape."
        )
    scored = truth != IGNORE
    truth, predictions = truth[scored], predictions[scored]
    for name, values in (("labels", truth), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} hold class ids outside [0, {num_classes}) after ignoring "
                f"{tuple(ignore_labels)} and shifting by {label_offset}: "
                f"{sorted(set(values[(values < 0) | (values >= num_classes)].tolist()))[:10]}."
            )
    counts = np.bincount(truth * num_classes + predictions, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def class_iou(confusion):
    """Per-class IoU = TP / (TP + FP + FN); NaN for classes with an empty union."""
    confusion = np.asarray(confusion, dtype="float64")
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def mean_iou(confusion):
    """Mean IoU over the classes whose union is not empty."""
    iou = class_iou(confusion)
    if np.all(np.isnan(iou)):
        raise ValueError("No class has any scored pixel; mIoU is undefined.")
    return float(np.nanmean(iou))


class SegmentationScore:
    """Accumulates a confusion matrix over images.

    Args:
        num_classes: number of scored classes.
        ignore_labels: raw annotation values that are not scored.
        label_offset: added to the scored raw values.
    """

    def __init__(self, num_classes, ignore_labels=(), label_offset=0):
        self.num_classes = num_classes
        self.ignore_labels = tuple(ignore_labels)
        self.label_offset = label_offset
        self.confusion = np.zeros((num_classes, num_classes), "int64")

    def update(self, predictions, labels):
        self.confusion += confusion_matrix(
            predictions, labels, self.num_classes, self.ignore_labels, self.label_offset
        )

    def class_iou(self):
        return class_iou(self.confusion)

    def mean_iou(self):
        return mean_iou(self.confusion)
