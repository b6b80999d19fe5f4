"""What the pretrainer and the distiller share: option and batch checks,
the image-text contrastive loss of a batch, projection heads and the teacher
targets they give (EMA teacher head / frozen teacher head)."""

from keras_tipsv2.data.common import CAPTION_MODES
from keras_tipsv2.layers.projection_head import TIPSv2ProjectionHead
from keras_tipsv2.training import losses

CENTERINGS = ("centering", "sinkhorn")
# The pretraining models' caption_sampling takes the data pipeline's modes.
CAPTION_SAMPLINGS = CAPTION_MODES


def check_choice(name, value, choices):
    """Raises a ValueError naming the option when `value` is not a choice."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")


def check_image_text_batch(batch, caption_sampling, model_name):
    """Raises a ValueError naming what an image-text batch lacks."""
    needed = ["images", "alt_text"]
    if caption_sampling == "multi":
        needed.append("caption")
    missing = [k for k in needed if k not in batch]
    if missing:
        raise ValueError(
            f"{model_name} batch is missing {missing}; it needs 'images', "
            "'alt_text' and (with caption_sampling='multi') 'caption'. Got "
            f"keys {sorted(batch)}."
        )
    for key in ("alt_text", "caption"):
        if key in batch and not {"token_ids", "padding_mask"} <= set(batch[key]):
            raise ValueError(
                f"batch[{key!r}] must be a dict with 'token_ids' and "
                f"'padding_mask'; got {sorted(batch[key])}."
            )


def batch_contrastive_loss(cls_tokens, batch, encode_text, caption_sampling, temperature):
    """TIPS's dual contrastive loss of a batch: CLS_1 <-> alt-text, CLS_2 <->
    the sampled caption (or the alt-text again with "alt_text_only").

    Args:
        cls_tokens: (B, 2, D) image CLS tokens.
        batch: the batch dict ("alt_text", "caption" token dicts).
        encode_text: maps a {"token_ids", "padding_mask"} dict to (B, D).
        caption_sampling: "multi" or "alt_text_only".
        temperature: scalar.
    """
    alt_text = encode_text(batch["alt_text"])
    caption = encode_text(batch["caption"]) if caption_sampling == "multi" else alt_text
    return losses.dual_contrastive_loss(cls_tokens, alt_text, caption, temperature)


def projection_head(input_dim, hidden_dim, bottleneck_dim, num_prototypes, num_layers, name):
    """A `TIPSv2ProjectionHead` built for `input_dim`-wide tokens, in float32
    (DINOv2 keeps its heads in fp32 under mixed precision)."""
    head = TIPSv2ProjectionHead(
        hidden_dim=hidden_dim,
        bottleneck_dim=bottleneck_dim,
        num_prototypes=num_prototypes,
        num_layers=num_layers,
        dtype="float32",
        name=name,
    )
    head.build((None, input_dim))
    return head


def teacher_targets(
    cls_logits,
    patch_logits,
    temperature,
    centering,
    cls_center,
    patch_center,
    center_momentum=0.9,
    sinkhorn_iterations=3,
    patch_weights=None,
    update_centers=True,
):
    """Teacher probabilities for the CLS and patch logits of a teacher head.

    Args:
        cls_logits: (..., K) teacher head logits of the CLS token(s).
        patch_logits: (..., K) teacher head logits of the patch tokens.
        temperature: tau_t.
        centering: "centering" (DINO centres, `cls_center` / `patch_center`
            variables of shape (1, K)) or "sinkhorn" (Sinkhorn-Knopp,
            `sinkhorn_iterations`; the centres are left alone).
        cls_center, patch_center: the centre variables.
        center_momentum: centre momentum (0.9).
        patch_weights: optional 0/1 weights of the patch rows (the iBOT
            mask); rows of weight 0 do not enter Sinkhorn or the centre.
        update_centers: assign the next centres (training steps only).

    Returns:
        (cls targets, patch targets), the shapes of the logits.
    """
    check_choice("centering", centering, CENTERINGS)
    if centering == "sinkhorn":
        return (
            losses.sinkhorn_knopp(cls_logits, temperature, sinkhorn_iterations),
            losses.sinkhorn_knopp(
                patch_logits, temperature, sinkhorn_iterations, weights=patch_weights
            ),
        )
    cls_targets = losses.centered_teacher_probabilities(cls_logits, cls_center, temperature)
    patch_targets = losses.centered_teacher_probabilities(patch_logits, patch_center, temperature)
    if update_centers:
        cls_center.assign(losses.updated_center(cls_center, cls_logits, center_momentum))
        patch_center.assign(
            losses.updated_center(
                patch_center, patch_logits, center_momentum, weights=patch_weights
            )
        )
    return cls_targets, patch_targets
