"""TIPSv2 pretraining losses, written with `keras.ops` only.

Every function computes in float32 (logits divided by temperatures of 0.04
leave too little precision in bfloat16) and returns a scalar or per-row
values as documented. Teacher quantities are passed through
`ops.stop_gradient` here, so callers cannot forget it.

Notation: K prototypes, B images, N patch tokens per image, M local crops.

Under data parallelism on TensorFlow or torch (see `distribution`), every
batch-wide quantity here spans the global batch: the contrastive and KoLeo
losses compare a replica's rows with the gathered rows of all replicas, the
centres and Sinkhorn-Knopp sum over all replicas, and means over examples
are `distribution.batch_mean`s. A loss then has the global batch's value on
every replica and the gradient of the replica's share.
"""

from keras import ops

from keras_tipsv2.layers.functional import l2_normalize
from keras_tipsv2.training import distribution


def _f32(x):
    return ops.cast(x, "float32")


def _no_grad(x):
    # convert first: torch's stop_gradient needs a tensor, not a NumPy array.
    return ops.stop_gradient(ops.convert_to_tensor(x))


def _matching_cross_entropy(queries, keys, temperature):
    """Per local query row: softmax cross-entropy of its cosine logits over
    the keys of the global batch, the target being its own pair."""
    all_keys = distribution.all_gather(keys)
    logits = ops.matmul(queries, ops.transpose(all_keys)) / _f32(temperature)
    targets = ops.one_hot(
        distribution.global_rows(ops.shape(queries)[0]),
        ops.shape(all_keys)[0],
        dtype="float32",
    )
    return -ops.sum(targets * ops.log_softmax(logits, axis=1), axis=1)


def clip_contrastive_loss(image_embeddings, text_embeddings, temperature):
    """Symmetric softmax (CLIP / InfoNCE) loss over the B x B cosine matrix.

    Args:
        image_embeddings: (B, D), not necessarily normalised.
        text_embeddings: (B, D), not necessarily normalised; row i pairs with
            image i.
        temperature: scalar divisor of the cosine logits.

    Returns:
        Scalar: (CE(image -> text) + CE(text -> image)) / 2, each averaged
        over the batch. Under data parallelism the negatives are those of
        the global batch.
    """
    x = l2_normalize(_f32(image_embeddings))
    y = l2_normalize(_f32(text_embeddings))
    # Each replica scores its images against all texts and its texts
    # against all images: the rows of the global B x B loss it owns.
    image_to_text = _matching_cross_entropy(x, y, temperature)
    text_to_image = _matching_cross_entropy(y, x, temperature)
    return 0.5 * (distribution.batch_mean(image_to_text) + distribution.batch_mean(text_to_image))


def dual_contrastive_loss(cls_tokens, alt_text_embeddings, caption_embeddings, temperature):
    """TIPS's dual image-text loss: CLS_1 <-> alt-text, CLS_2 <-> caption.

    Args:
        cls_tokens: (B, 2, D) image CLS tokens.
        alt_text_embeddings: (B, D) embeddings of the web alt-text.
        caption_embeddings: (B, D) embeddings of the per-example sampled
            synthetic caption.
        temperature: scalar.

    Returns:
        Scalar, the mean of the two CLIP losses.
    """
    if len(cls_tokens.shape) != 3 or (
        cls_tokens.shape[1] is not None and cls_tokens.shape[1] < 2
    ):
        raise ValueError(
            "dual_contrastive_loss needs cls_tokens of shape (batch, 2, dim); "
            f"got {tuple(cls_tokens.shape)}."
        )
    first = clip_contrastive_loss(cls_tokens[:, 0], alt_text_embeddings, temperature)
    second = clip_contrastive_loss(cls_tokens[:, 1], caption_embeddings, temperature)
    return 0.5 * (first + second)


def centered_teacher_probabilities(teacher_logits, center, teacher_temperature):
    """DINO targets: softmax((z_t - c) / tau_t) along the prototype axis."""
    logits = _f32(_no_grad(teacher_logits)) - _f32(_no_grad(center))
    return ops.softmax(logits / _f32(teacher_temperature), axis=-1)


def updated_center(center, teacher_logits, momentum=0.9, weights=None):
    """The next DINO centre: m * c + (1 - m) * mean of the teacher logits.

    Args:
        center: (1, K).
        teacher_logits: (..., K); averaged over every leading axis (for patch
            logits (B, N, K) that is the mean over tokens, then images).
        momentum: centre momentum (0.9).
        weights: optional (...) weights of the rows in the mean (e.g. the
            iBOT mask); rows of weight 0 are ignored.
    """
    logits = ops.reshape(_f32(_no_grad(teacher_logits)), (-1, ops.shape(teacher_logits)[-1]))
    if weights is None:
        w = ops.ones((ops.shape(logits)[0], 1), dtype="float32")
    else:
        w = ops.reshape(_f32(weights), (-1, 1))
    # Sums over the global batch's rows.
    total = distribution.all_sum(ops.sum(w * logits, axis=0, keepdims=True))
    batch_mean = total / ops.maximum(distribution.all_sum(ops.sum(w)), 1.0)
    return momentum * _f32(center) + (1.0 - momentum) * batch_mean


def sinkhorn_knopp(teacher_logits, teacher_temperature, num_iterations=3, weights=None):
    """Sinkhorn-Knopp teacher targets (SwAV / DINOv2 "sinkhorn_knopp").

    Args:
        teacher_logits: (..., K); all leading axes are samples.
        teacher_temperature: scalar.
        num_iterations: 3 as in DINOv2.
        weights: optional (...) 0/1 sample weights; samples of weight 0 are
            left out of the transport problem and get all-zero targets.

    Returns:
        (..., K) targets; each row (of weight 1) sums to 1 and, over the
        samples, every prototype receives the same total mass.
    """
    shape = ops.shape(teacher_logits)
    num_prototypes = shape[-1]
    logits = ops.reshape(_f32(_no_grad(teacher_logits)), (-1, num_prototypes))
    logits = logits / _f32(teacher_temperature)
    # Subtracting the global max leaves Q unchanged after normalisation
    # and keeps exp() finite at small temperatures. The samples are those
    # of the global batch: its max, and sums over all replicas' rows.
    q = ops.exp(logits - distribution.all_max(ops.max(logits)))
    if weights is None:
        w = ops.ones((ops.shape(logits)[0], 1), dtype="float32")
    else:
        w = ops.reshape(_f32(weights), (-1, 1))
    q = q * w
    num_samples = ops.maximum(distribution.all_sum(ops.sum(w)), 1.0)
    q = q / distribution.all_sum(ops.sum(q))
    for _ in range(num_iterations):
        # Each prototype (column here) gets mass 1/K ...
        column_mass = distribution.all_sum(ops.sum(q, axis=0, keepdims=True))
        q = q / ops.maximum(column_mass, 1e-30)
        q = q / num_prototypes
        # ... and each sample (row) mass 1/num_samples.
        q = q / ops.maximum(ops.sum(q, axis=1, keepdims=True), 1e-30)
        q = q * w / num_samples
    return ops.reshape(q * num_samples, shape)


def teacher_student_cross_entropy(teacher_probabilities, student_logits, student_temperature=0.1):
    """Per-row -sum_k p_t(k) log softmax(z_s / tau_s)(k); shape (...)."""
    log_p = ops.log_softmax(_f32(student_logits) / _f32(student_temperature), axis=-1)
    return -ops.sum(_f32(_no_grad(teacher_probabilities)) * log_p, axis=-1)


def dino_cls_loss(teacher_probabilities, student_logits, student_temperature=0.1):
    """DINO image-level loss of M student views against one teacher view.

    Args:
        teacher_probabilities: (B, K) targets from the clean global view.
        student_logits: (B, M, K) head logits of the M student views (local
            crops), or (B, K) for a single view.
        student_temperature: tau_s (0.1).

    Returns:
        Scalar: cross-entropy averaged over images and views.
    """
    if len(student_logits.shape) == 2:
        student_logits = student_logits[:, None]
    ce = teacher_student_cross_entropy(
        teacher_probabilities[:, None], student_logits, student_temperature
    )
    return distribution.batch_mean(ce)


PATCH_LOSSES = ("ibot++", "ibot", "visible")


def _mean_over_selected_tokens(ce, selected):
    """Each image's mean of `ce` (B, N) over its tokens where `selected` (B,
    N) is 1 (0 for an image with none), then the mean over images."""
    per_image = ops.sum(ce * selected, axis=1) / ops.maximum(ops.sum(selected, axis=1), 1.0)
    return distribution.batch_mean(per_image)


def patch_loss(
    teacher_probabilities,
    student_logits,
    masks,
    mode="ibot++",
    student_temperature=0.1,
    visible_weight=None,
):
    """iBOT++ (TIPSv2) or iBOT (TIPS v1 / DINOv2) patch-level loss.

    Args:
        teacher_probabilities: (B, N, K) or (B, h, w, K) targets from the
            clean image.
        student_logits: same shape, head logits of the masked image.
        masks: (B, N) or (B, h, w) bool, True = masked for the student; may
            be None for "ibot++" without `visible_weight`.
        mode: "ibot++": every token counts; "ibot": only masked tokens
            count; "visible": only visible (unmasked) tokens count, the part
            of iBOT++ that iBOT lacks (a distillation ablation).
        student_temperature: tau_s (0.1).
        visible_weight: "ibot++" only. None: the paper's Eq. 3, a uniform
            mean over the N tokens of an image (at mask ratio r the masked
            tokens carry r of the loss). A number w: masked and visible
            tokens are averaged separately and an image's loss is
            mean_masked + w * mean_visible, as lightly's
            `IBOTPlusPlusPatchLoss` does; w = 0 is iBOT, and at r = 0.75,
            w = 1 weighs a visible token 3x a masked one.

    Returns:
        Scalar loss: per image as above ("ibot" and "visible" divide an
        image's sum by its own count of such tokens, 0 for an image without
        any), then the mean over images.
    """
    if mode not in PATCH_LOSSES:
        raise ValueError(f"patch loss mode must be one of {PATCH_LOSSES}; got {mode!r}.")
    if visible_weight is not None and mode != "ibot++":
        raise ValueError(
            f"visible_weight only applies to the 'ibot++' patch loss; got mode {mode!r}."
        )
    if visible_weight is not None and visible_weight < 0:
        raise ValueError(f"visible_weight must be >= 0; got {visible_weight}.")
    ce = teacher_student_cross_entropy(teacher_probabilities, student_logits, student_temperature)
    batch = ops.shape(ce)[0]
    ce = ops.reshape(ce, (batch, -1))
    if mode == "ibot++" and visible_weight is None:
        return distribution.batch_mean(ops.mean(ce, axis=1))
    if masks is None:
        raise ValueError(f"The {mode!r} patch loss needs the student's masks; got None.")
    masked = ops.reshape(ops.cast(masks, "float32"), (batch, -1))
    if mode == "ibot":
        return _mean_over_selected_tokens(ce, masked)
    visible = _mean_over_selected_tokens(ce, 1.0 - masked)
    if mode == "visible":
        return visible
    return _mean_over_selected_tokens(ce, masked) + visible_weight * visible


def supervised_patch_tokens(masks, mode="ibot++"):
    """(B, ...) 0/1 weights of the tokens `patch_loss` trains, or None for
    all of them: the rows the teacher's centre or Sinkhorn-Knopp should see."""
    if mode == "ibot++" or masks is None:
        return None
    masked = ops.cast(masks, "float32")
    return masked if mode == "ibot" else 1.0 - masked


def koleo_loss(embeddings, epsilon=1e-8):
    """KoLeo spreading regulariser: -mean_i log(||x_i - x_nn(i)|| + eps).

    x are the L2-normalised rows of `embeddings` (B, D) and nn(i) is the
    other row with the largest dot product (DINOv2's estimator), searched in
    the global batch under data parallelism.
    """
    x = l2_normalize(_f32(embeddings))
    everyone = distribution.all_gather(x)
    similarity = ops.matmul(x, ops.transpose(everyone))
    # Exclude the point itself from its neighbours.
    itself = ops.one_hot(
        distribution.global_rows(ops.shape(x)[0]), ops.shape(everyone)[0], dtype="float32"
    )
    similarity = similarity - 3.0 * itself
    neighbour = ops.argmax(_no_grad(similarity), axis=1)
    distance = ops.sqrt(
        ops.sum(ops.square(x - ops.take(everyone, neighbour, axis=0)), axis=-1) + 1e-12
    )
    return -distribution.batch_mean(ops.log(distance + epsilon))


FEATURE_LOSSES = ("cosine", "smooth_l1")


def feature_matching_loss(
    student_features, teacher_features, mode="cosine", beta=1.0, token_weights=None
):
    """Direct feature distillation: student tokens toward teacher tokens.

    Args:
        student_features: (..., D) student tokens, already projected to the
            teacher's width.
        teacher_features: (..., D) teacher tokens (no gradient flows to them).
        mode: "cosine": mean over tokens of 1 - cos(student, teacher);
            "smooth_l1": mean over tokens and channels of the smooth-L1
            (Huber) distance, quadratic below `beta`, linear above.
        beta: the smooth-L1 threshold.
        token_weights: optional 0/1 weights, the token axes of the features
            with a leading batch axis (e.g. (B, h, w)): then each image's
            mean runs over its tokens of weight 1 (0 for none), followed by
            the mean over images.

    Returns:
        Scalar loss, 0 when the student equals the teacher.
    """
    if mode not in FEATURE_LOSSES:
        raise ValueError(f"feature loss mode must be one of {FEATURE_LOSSES}; got {mode!r}.")
    student = _f32(student_features)
    teacher = _f32(_no_grad(teacher_features))
    if mode == "cosine":
        per_token = 1.0 - ops.sum(l2_normalize(student) * l2_normalize(teacher), axis=-1)
    else:
        difference = ops.abs(student - teacher)
        huber = ops.where(
            difference < beta, 0.5 * ops.square(difference) / beta, difference - 0.5 * beta
        )
        per_token = ops.mean(huber, axis=-1)
    if token_weights is None:
        return distribution.batch_mean(per_token)
    batch = ops.shape(per_token)[0]
    return _mean_over_selected_tokens(
        ops.reshape(per_token, (batch, -1)),
        ops.reshape(_f32(token_weights), (batch, -1)),
    )
