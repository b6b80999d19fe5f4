"""Image-text retrieval recall@K and zero-shot classification accuracy.

Both work from embeddings (any unnormalised (N, D) arrays); cosine
similarities are computed with keras.ops, ranking bookkeeping in numpy.
"""

import numpy as np
from keras import ops


def cosine_similarities(a, b):
    """(N, M) cosine similarities of the rows of `a` (N, D) and `b` (M, D)."""
    a = ops.convert_to_tensor(a, dtype="float32")
    b = ops.convert_to_tensor(b, dtype="float32")
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"Expected (N, D) and (M, D) embeddings; got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    a = a / ops.maximum(ops.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / ops.maximum(ops.norm(b, axis=-1, keepdims=True), 1e-12)
    return ops.convert_to_numpy(ops.matmul(a, ops.transpose(b)))


def _ranks_of_best_match(similarities, relevant):
    """0-based rank of the best-ranked relevant column of each row.

    Ties are broken pessimistically (a relevant item tied with an irrelevant
    one counts as ranked below it), so a constant model scores no better than
    chance.
    """
    best_relevant = np.where(relevant, similarities, -np.inf).max(axis=1)
    beaten_by = (similarities > best_relevant[:, None]) & ~relevant
    tied_with = (similarities == best_relevant[:, None]) & ~relevant
    return beaten_by.sum(1) + tied_with.sum(1)


def retrieval_recall(image_embeddings, text_embeddings, text_image_ids, ks=(1, 5, 10)):
    """Recall@K for image->text and text->image retrieval.

    Args:
        image_embeddings: (N, D), one row per image.
        text_embeddings: (M, D), one row per caption.
        text_image_ids: (M,) index of the image each caption describes; an
            image may have several captions.
        ks: the K values.

    Returns:
        {"image_to_text@K": float, "text_to_image@K": float} in [0, 1].
        An image counts as found for I->T when any of its captions is in the
        top K; a caption for T->I when its image is.
    """
    text_image_ids = np.asarray(text_image_ids, dtype="int64")
    similarities = cosine_similarities(image_embeddings, text_embeddings)
    num_images, num_texts = similarities.shape
    if text_image_ids.shape != (num_texts,):
        raise ValueError(
            f"text_image_ids must have one entry per caption ({num_texts}); "
            f"got shape {text_image_ids.shape}."
        )
    if text_image_ids.min() < 0 or text_image_ids.max() >= num_images:
        raise ValueError(f"text_image_ids must lie in [0, {num_images}).")
    relevant = text_image_ids[None, :] == np.arange(num_images)[:, None]
    if not relevant.any(axis=1).all():
        raise ValueError("Every image needs at least one caption.")
    image_ranks = _ranks_of_best_match(similarities, relevant)
    text_ranks = _ranks_of_best_match(similarities.T, relevant.T)
    results = {}
    for k in ks:
        results[f"image_to_text@{k}"] = float(np.mean(image_ranks < k))
        results[f"text_to_image@{k}"] = float(np.mean(text_ranks < k))
    return results


def classification_accuracy(image_embeddings, class_embeddings, labels, ks=(1, 5)):
    """Zero-shot top-K accuracy: is the true class among the K most similar?

    Args:
        image_embeddings: (N, D).
        class_embeddings: (C, D), e.g. from `class_text_embeddings`.
        labels: (N,) true class ids.
        ks: the K values.

    Returns:
        {"top{K}": float} in [0, 1].
    """
    labels = np.asarray(labels, dtype="int64")
    similarities = cosine_similarities(image_embeddings, class_embeddings)
    if labels.shape != (similarities.shape[0],):
        raise ValueError(
            f"labels must have one entry per image ({similarities.shape[0]}); got {labels.shape}."
        )
    num_classes = similarities.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}).")
    relevant = labels[:, None] == np.arange(num_classes)[None, :]
    ranks = _ranks_of_best_match(similarities, relevant)
    return {f"top{k}": float(np.mean(ranks < k)) for k in ks}
