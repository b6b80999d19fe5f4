import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.training import TIPSv2Pretrainer
from keras_tipsv2.training.ema import (
    head_parameter_count,
    pretraining_parameter_counts,
    vit_parameter_count,
)
from tests.conftest import tiny_backbone_kwargs

BATCH = 8
STEPS = 30
HEAD = dict(head_hidden_dim=32, head_bottleneck_dim=16, num_prototypes=64)
# Sinkhorn targets start far from the student (with the DINO centre, the
# student equals the teacher at step 0, so the distillation terms start at
# their floor and only the contrastive term can fall in 30 steps).
CONFIG = dict(HEAD, centering="sinkhorn", ema_momentum=0.9, freeze_last_layer_steps=2, seed=3)


def make_batch(seed=0, batch=BATCH, crops=True):
    rng = np.random.default_rng(seed)

    def text():
        ids = rng.integers(1, 64, (batch, 8)).astype("int32")
        mask = np.ones((batch, 8), "int32")
        ids[:, 6:], mask[:, 6:] = 0, 0
        return {"token_ids": ids, "padding_mask": mask}

    out = {
        "images": rng.uniform(size=(batch, 28, 28, 3)).astype("float32"),
        "alt_text": text(),
        "caption": text(),
    }
    if crops:
        out["local_crops"] = rng.uniform(size=(batch, 2, 14, 14, 3)).astype("float32")
    return out


def make_pretrainer(**overrides):
    keras.utils.set_random_seed(0)
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    model = TIPSv2Pretrainer(backbone, **dict(CONFIG, **overrides))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
    return model


def numpy_weights(layer):
    return [ops.convert_to_numpy(w).copy() for w in layer.weights]


@pytest.fixture(scope="module")
def trained():
    """A tiny pretrainer after 30 steps, with per-step records."""
    model = make_pretrainer()
    batch = make_batch()
    prototypes = lambda: ops.convert_to_numpy(model.student_head.prototypes).copy()
    records = {
        "loss": [],
        "student": [numpy_weights(model.student_head)],
        "teacher": [numpy_weights(model.teacher_head)],
        "prototypes": [prototypes()],
    }
    for _ in range(STEPS):
        logs = model.train_on_batch(batch, return_dict=True)
        records["loss"].append(float(logs["loss"]))
        records["student"].append(numpy_weights(model.student_head))
        records["teacher"].append(numpy_weights(model.teacher_head))
        records["prototypes"].append(prototypes())
    records["logs"] = logs
    return model, batch, records


def test_total_loss_falls_clearly_over_thirty_steps(trained):
    losses = trained[2]["loss"]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:2]), losses


def test_logs_report_every_loss_term_temperature_and_momentum(trained):
    logs = trained[2]["logs"]
    for key in ("contrastive_loss", "dino_loss", "patch_loss", "koleo_loss", "temperature", "teacher_temperature"):
        assert np.isfinite(float(logs[key])), key
    np.testing.assert_allclose(float(logs["ema_momentum"]), 0.9, rtol=1e-6)
    np.testing.assert_allclose(float(logs["teacher_temperature"]), 0.07, rtol=1e-6)


def test_teacher_head_is_exact_ema_of_student_after_each_step(trained):
    student, teacher = trained[2]["student"], trained[2]["teacher"]
    expected = [w.astype(np.float64) for w in student[0]]
    for step in range(1, 6):
        expected = [0.9 * t + 0.1 * s for t, s in zip(expected, student[step])]
        for got, want in zip(teacher[step], expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # The teacher really moved: it is no longer the initial copy.
    assert not np.allclose(teacher[5][0], student[0][0], atol=1e-5)


def test_prototypes_are_frozen_for_the_first_steps_then_trained(trained):
    prototypes = trained[2]["prototypes"]
    np.testing.assert_array_equal(prototypes[1], prototypes[0])
    np.testing.assert_array_equal(prototypes[2], prototypes[0])
    assert not np.allclose(prototypes[3], prototypes[2])


def test_step_counter_counts_optimizer_steps(trained):
    assert int(ops.convert_to_numpy(trained[0].step_counter)) == STEPS


def test_save_and_load_weights_restore_training_state(trained, tmp_path):
    model = trained[0]
    path = str(tmp_path / "pretrainer.weights.h5")
    model.save_weights(path)
    fresh = make_pretrainer()
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path)
    # save_weights holds weights, not SeedGenerator states (the resumable
    # checkpoints of training/resumable_fit.py add those).
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b), err_msg=a.path)
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b), err_msg=a.path)
    assert int(ops.convert_to_numpy(fresh.step_counter)) == STEPS
    assert int(ops.convert_to_numpy(fresh.optimizer.iterations)) == STEPS


def test_head_only_ema_holds_no_copy_of_the_backbone():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    model = TIPSv2Pretrainer(backbone, **HEAD)
    own = {id(w) for w in backbone.weights}
    own |= {id(w) for w in model.student_head.weights + model.teacher_head.weights}
    own |= {id(model.cls_center), id(model.patch_center), id(model.step_counter)}
    assert {id(w) for w in model.weights} == own
    assert not model.teacher_head.trainable_weights


def test_full_ema_teacher_starts_as_a_copy_of_the_image_tower():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    model = TIPSv2Pretrainer(backbone, ema="full", **HEAD)
    teacher = model.teacher_vision_encoder
    assert not teacher.trainable_weights
    for t, s in zip(teacher.weights, backbone.vision_encoder.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(t), ops.convert_to_numpy(s))


@pytest.mark.parametrize("ema", ["head", "full"])
def test_parameter_counts_from_shapes_match_the_variables(ema):
    kwargs = tiny_backbone_kwargs()
    model = TIPSv2Pretrainer(TIPSv2Backbone(**kwargs), ema=ema, **HEAD)
    vision = vit_parameter_count(
        kwargs["vision_hidden_dim"],
        kwargs["vision_num_layers"],
        kwargs["vision_intermediate_dim"],
        kwargs["vision_patch_size"],
        kwargs["vision_position_grid"],
    )
    head = head_parameter_count(kwargs["vision_hidden_dim"], 32, 16, 64)
    assert model.parameter_counts() == pretraining_parameter_counts(vision, head, ema)


def test_head_only_ema_saves_about_42_percent_on_vit_b():
    vision = vit_parameter_count(768, 12, 3072, patch_size=14, position_grid=(32, 32))
    head = head_parameter_count(768, 2048, 256, 32768)
    head_only = pretraining_parameter_counts(vision, head, "head")["total"]
    full = pretraining_parameter_counts(vision, head, "full")["total"]
    assert vision == 86_297_088 and head == 14_684_416
    assert 0.42 < 1 - head_only / full < 0.43


def test_missing_caption_is_a_clear_error():
    model = TIPSv2Pretrainer(TIPSv2Backbone(**tiny_backbone_kwargs()), **HEAD)
    batch = make_batch(batch=2)
    del batch["caption"]
    with pytest.raises(ValueError, match="caption"):
        model.compute_losses(batch)


def test_mixed_bfloat16_step_runs_with_ibot_and_dino_centres():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = make_pretrainer(freeze_last_layer_steps=0, centering="centering", patch_loss="ibot")
        logs = model.train_on_batch(make_batch(batch=2), return_dict=True)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert model.backbone.compute_dtype == "bfloat16"
    assert np.isfinite(float(logs["loss"]))
    assert model.student_head.prototypes.dtype == "float32"
    assert np.abs(ops.convert_to_numpy(model.cls_center)).sum() > 0
    assert np.abs(ops.convert_to_numpy(model.patch_center)).sum() > 0


def patch_loss_of(masks, **overrides):
    """The patch loss term of a fresh pretrainer on a batch with given masks
    (DINO centres, not updated: the targets ignore which tokens are trained)."""
    model = make_pretrainer(centering="centering", **overrides)
    batch = dict(make_batch(batch=2, crops=False), masks=masks)
    return float(model.compute_losses(batch, training=False)[1]["patch_loss"])


def test_separately_normalised_patch_loss_is_masked_mean_plus_weighted_visible_mean():
    masks = np.array([[[1, 1], [1, 0]], [[1, 0], [0, 0]]], bool)
    masked = patch_loss_of(masks, patch_loss="ibot")
    visible = patch_loss_of(masks, patch_loss="visible")
    assert masked != pytest.approx(visible, rel=1e-3)
    assert patch_loss_of(masks, patch_visible_weight=0.0) == pytest.approx(masked, rel=1e-5)
    assert patch_loss_of(masks, patch_visible_weight=2.0) == pytest.approx(
        masked + 2.0 * visible, rel=1e-5
    )


def test_visible_weight_needs_the_ibot_plus_plus_loss_and_survives_the_config():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    with pytest.raises(ValueError, match="patch_visible_weight"):
        TIPSv2Pretrainer(backbone, patch_loss="ibot", patch_visible_weight=1.0, **HEAD)
    model = TIPSv2Pretrainer(backbone, patch_visible_weight=1.0, **HEAD)
    assert model.get_config()["patch_visible_weight"] == 1.0
