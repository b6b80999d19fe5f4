import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.training import TIPSv2Pretrainer
from keras_tipsv2.training import losses
from keras_tipsv2.training.distiller import TIPSv2Distiller
from tests.conftest import tiny_backbone_kwargs
from tests.test_pretrainer import make_batch as pretrainer_batch

BATCH = 8
HEAD = dict(head_hidden_dim=32, head_bottleneck_dim=16, num_prototypes=64)
EPOCHS, STEPS_PER_EPOCH = 4, 5


def tiny_teacher(**overrides):
    return TIPSv2Backbone(**tiny_backbone_kwargs(**overrides))


def tiny_student(**overrides):
    """Half the teacher's depth, both towers."""
    return TIPSv2Backbone(
        **tiny_backbone_kwargs(vision_num_layers=1, text_num_layers=1, **overrides)
    )


def make_batch(seed=0, batch=BATCH):
    # The pretrainer tests' batch, without local crops (the distiller has none).
    return pretrainer_batch(seed=seed, batch=batch, crops=False)


def numpy_weights(layer):
    return [ops.convert_to_numpy(w).copy() for w in layer.weights]


def patch_cosine(student, teacher, images):
    """Mean cosine similarity of student and teacher patch tokens."""
    s = ops.convert_to_numpy(student.encode_images(images)["patch_tokens"]).astype("float64")
    t = ops.convert_to_numpy(teacher.encode_images(images)["patch_tokens"]).astype("float64")
    s /= np.linalg.norm(s, axis=-1, keepdims=True)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    return float(np.mean(np.sum(s * t, axis=-1)))


@pytest.fixture(scope="module")
def distilled():
    """A 1-layer student distilled from a frozen 2-layer teacher of the same
    width by `fit` (features mode, cosine), with before/after records."""
    keras.utils.set_random_seed(0)
    teacher, student = tiny_teacher(), tiny_student()
    batch = make_batch()
    held_out = make_batch(seed=1)["images"]
    records = {
        "teacher": numpy_weights(teacher),
        "cosine_before": patch_cosine(student, teacher, held_out),
    }
    model = TIPSv2Distiller(teacher, student, mode="features", text_tower="student", seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.0))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    history = model.fit(data, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, verbose=0)
    records["history"] = history.history
    records["cosine_after"] = patch_cosine(student, teacher, held_out)
    # Shown with `pytest -rP`: the numbers the distillation report quotes.
    print(f"patch cosine to the teacher: {records['cosine_before']:.3f} -> {records['cosine_after']:.3f}")
    return model, records


def test_fit_lowers_the_distillation_loss(distilled):
    loss = distilled[1]["history"]["loss"]
    assert loss[-1] < 0.6 * loss[0], loss


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="TensorFlow's jit_compile")
def test_a_resizing_step_compiles_under_xla():
    # A teacher at another size resizes the images and its patch grid
    # inside the step; TensorFlow's antialiased resize has no XLA kernel,
    # and `fit` compiles with XLA on GPUs by default.
    model = TIPSv2Distiller(
        tiny_teacher(), tiny_student(), mode="features", teacher_image_size=56, seed=0
    )
    model.compile(optimizer="sgd", jit_compile=True)
    data = tf.data.Dataset.from_tensors(make_batch()).repeat()
    history = model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_student_patch_features_move_toward_the_teachers(distilled):
    records = distilled[1]
    before, after = records["cosine_before"], records["cosine_after"]
    # On images the student never trained on.
    assert abs(before) < 0.3, before
    assert after > before + 0.4, (before, after)


def test_teacher_weights_are_bit_identical_after_fit(distilled):
    model, records = distilled
    assert not model.teacher.trainable_weights
    for before, after in zip(records["teacher"], model.teacher.weights):
        np.testing.assert_array_equal(before, ops.convert_to_numpy(after), err_msg=after.path)


def test_fit_logs_every_loss_term_and_the_temperature(distilled):
    history = distilled[1]["history"]
    for key in ("loss", "contrastive_loss", "cls_loss", "patch_loss", "temperature"):
        assert len(history[key]) == EPOCHS and np.all(np.isfinite(history[key])), key
    # Only the student's own text tower was trained, so the contrastive
    # term and the learned temperature both moved.
    assert history["contrastive_loss"][-1] < history["contrastive_loss"][0]
    assert history["temperature"][-1] != pytest.approx(0.07, abs=1e-5)


def test_head_mode_fits_a_narrower_student_to_the_frozen_teacher_head():
    """Teacher twice as deep and wider (48), at its own resolution (42 px, a
    3 x 3 grid resized to the student's 2 x 2), aligned with its text tower
    through the trained projection of the student's CLS tokens."""
    keras.utils.set_random_seed(0)
    teacher = tiny_teacher(vision_hidden_dim=48, text_hidden_dim=48)
    model = TIPSv2Distiller(
        teacher, tiny_student(), mode="head", text_tower="teacher",
        teacher_image_size=42, seed=0, **HEAD,
    )  # fmt: skip
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.0))
    batch = make_batch()
    teacher_head = numpy_weights(model.teacher_head)
    projection = ops.convert_to_numpy(model.text_projection.kernel).copy()

    def step_logs():
        # Reset first: the logs are then this step's losses (before its update).
        model.reset_metrics()
        return model.train_on_batch(batch, return_dict=True)

    before = step_logs()
    for _ in range(7):
        step_logs()
    after = step_logs()
    # Sinkhorn targets of a frozen teacher are the same at every step.
    assert float(after["patch_loss"]) < 0.8 * float(before["patch_loss"])
    assert float(after["cls_loss"]) < 0.8 * float(before["cls_loss"])
    for w, expected in zip(model.teacher_head.weights, teacher_head):
        np.testing.assert_array_equal(ops.convert_to_numpy(w), expected)
    assert not np.allclose(ops.convert_to_numpy(model.text_projection.kernel), projection)
    assert not model.student.text_encoder.trainable_weights


def test_student_head_starts_as_the_teacher_head_but_for_its_input_layer():
    teacher, student = tiny_teacher(vision_hidden_dim=48, text_hidden_dim=48), tiny_student()
    model = TIPSv2Distiller(teacher, student, **HEAD)
    for s, t in zip(model.student_head.weights, model.teacher_head.weights):
        if s.path.endswith("dense_0/kernel"):
            assert tuple(s.shape) == (32, 32) and tuple(t.shape) == (48, 32)
        else:
            np.testing.assert_array_equal(ops.convert_to_numpy(s), ops.convert_to_numpy(t))
    assert not model.teacher_head.trainable_weights


def test_a_pretrainers_teacher_head_is_used_frozen():
    teacher = tiny_teacher()
    pretrainer = TIPSv2Pretrainer(teacher, head_hidden_dim=24, head_bottleneck_dim=8, num_prototypes=40)
    model = TIPSv2Distiller(teacher, tiny_student(), teacher_head=pretrainer.teacher_head)
    assert model.teacher_head is pretrainer.teacher_head
    assert model.num_prototypes == 40 and model.head_hidden_dim == 24
    assert not model.teacher_head.trainable_weights


def test_teacher_tokens_come_on_the_students_grid():
    model = TIPSv2Distiller(tiny_teacher(), tiny_student(), mode="features", teacher_image_size=42)
    cls, patch = model._teacher_tokens(make_batch(batch=2)["images"], (2, 2))
    # 42 px is a 3 x 3 grid for the teacher, resized to the student's 2 x 2.
    assert tuple(cls.shape) == (2, 2, 32) and tuple(patch.shape) == (2, 2, 2, 32)


def test_features_of_a_narrower_student_are_projected_to_the_teachers_width():
    teacher = tiny_teacher(vision_hidden_dim=48, text_hidden_dim=48)
    model = TIPSv2Distiller(teacher, tiny_student(), mode="features", feature_loss="smooth_l1")
    rng = np.random.default_rng(0)
    student_cls = rng.normal(size=(2, 2, 32)).astype("float32")
    student_patch = rng.normal(size=(2, 2, 2, 32)).astype("float32")
    teacher_cls = ops.convert_to_numpy(model.feature_projection(student_cls))
    teacher_patch = rng.normal(size=(2, 2, 2, 48)).astype("float32")
    cls_loss, patch_loss = model._feature_losses(
        student_cls, student_patch, teacher_cls, teacher_patch, None
    )
    assert teacher_cls.shape == (2, 2, 48)
    assert float(cls_loss) == pytest.approx(0.0, abs=1e-6)
    assert float(patch_loss) > 0.1


def test_student_backbone_pairs_the_student_images_with_the_teacher_text():
    teacher, student = tiny_teacher(), tiny_student()
    model = TIPSv2Distiller(teacher, student, mode="features", text_tower="teacher")
    exported = model.student_backbone()
    assert exported.vision_num_layers == 1 and exported.text_num_layers == 2
    for source, target in [
        (student.vision_encoder, exported.vision_encoder),
        (teacher.text_encoder, exported.text_encoder),
        (student.contrastive_temperature, exported.contrastive_temperature),
    ]:
        for a, b in zip(source.weights, target.weights):
            np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    own = TIPSv2Distiller(tiny_teacher(), student, mode="features", text_tower="student")
    assert own.student_backbone() is student


def test_student_backbone_behind_a_text_projection_is_a_clear_error():
    teacher = tiny_teacher(vision_hidden_dim=48, text_hidden_dim=48)
    model = TIPSv2Distiller(teacher, tiny_student(), mode="features", text_tower="teacher")
    with pytest.raises(ValueError, match="text_tower='student'"):
        model.student_backbone()


def test_mask_ratio_masks_that_fraction_of_student_patches():
    model = TIPSv2Distiller(tiny_teacher(), tiny_student(), mode="features", mask_ratio=0.5, seed=0)
    masks = ops.convert_to_numpy(model._student_masks(np.zeros((3, 56, 56, 3), "float32")))
    assert masks.shape == (3, 4, 4)
    np.testing.assert_array_equal(masks.reshape(3, -1).sum(axis=1), [8, 8, 8])
    unmasked = TIPSv2Distiller(tiny_teacher(), tiny_student(), mode="features")
    assert unmasked._student_masks(np.zeros((3, 56, 56, 3), "float32")) is None


def supervision_case(mode, patch_supervision):
    """A distiller masking half the student's patches, the student's patch
    tokens of a batch and the same tokens changed at the masked patches."""
    model = TIPSv2Distiller(
        tiny_teacher(), tiny_teacher(), mode=mode, mask_ratio=0.5, seed=0,
        patch_supervision=patch_supervision, text_tower="student", **HEAD,
    )  # fmt: skip
    images = make_batch(batch=2)["images"]
    masks = model._student_masks(images)
    masked = ops.convert_to_numpy(masks)
    teacher_cls, teacher_patch = model._teacher_tokens(images, masked.shape[1:])
    student_patch = ops.convert_to_numpy(teacher_patch).copy()
    changed = student_patch.copy()
    changed[masked] += 3.0 * np.random.default_rng(0).normal(size=changed[masked].shape)
    return model, masks, teacher_cls, teacher_patch, student_patch, changed


def patch_losses(model, masks, teacher_cls, teacher_patch, *student_patches):
    if model.mode == "features":
        return [
            float(model._feature_losses(teacher_cls, p, teacher_cls, teacher_patch, masks)[1])
            for p in student_patches
        ]
    return [
        float(model._head_losses(teacher_cls, p, teacher_cls, teacher_patch, masks, False)[1])
        for p in student_patches
    ]


@pytest.mark.parametrize("mode", ["head", "features"])
def test_visible_supervision_ignores_what_the_student_makes_of_masked_patches(mode):
    model, masks, cls, patch, student, changed = supervision_case(mode, "visible")
    before, after = patch_losses(model, masks, cls, patch, student, changed)
    assert after == pytest.approx(before, rel=1e-6)


@pytest.mark.parametrize("mode", ["head", "features"])
@pytest.mark.parametrize("supervision", ["masked", "all"])
def test_masked_and_all_token_supervision_see_the_masked_patches(mode, supervision):
    model, masks, cls, patch, student, changed = supervision_case(mode, supervision)
    before, after = patch_losses(model, masks, cls, patch, student, changed)
    assert abs(after - before) > 1e-3


def test_masked_supervision_of_features_averages_the_masked_tokens_only():
    model, masks, cls, patch, student, changed = supervision_case("features", "masked")
    got = patch_losses(model, masks, cls, patch, changed)[0]
    m = ops.convert_to_numpy(masks).reshape(2, -1)
    s = changed.reshape(*m.shape, -1)
    t = ops.convert_to_numpy(patch).reshape(*m.shape, -1)
    cosine = np.sum(s * t, -1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)
    want = np.mean([(1 - cosine[i])[m[i]].mean() for i in range(2)])
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("supervision", ["masked", "visible"])
def test_token_subset_supervision_without_masking_is_a_clear_error(supervision):
    with pytest.raises(ValueError, match="mask_ratio > 0"):
        TIPSv2Distiller(tiny_teacher(), tiny_student(), patch_supervision=supervision)


@pytest.mark.parametrize(
    "option, value",
    [("mode", "logits"), ("text_tower", "none"), ("feature_loss", "l2"), ("mask_ratio", 1.0),
     ("patch_supervision", "some")],
)  # fmt: skip
def test_bad_options_are_clear_errors(option, value):
    with pytest.raises(ValueError, match=option):
        TIPSv2Distiller(tiny_teacher(), tiny_student(), **{option: value})


def test_teacher_head_of_another_width_is_a_clear_error():
    head = TIPSv2Pretrainer(tiny_student(), **HEAD).teacher_head
    teacher = tiny_teacher(vision_hidden_dim=48, text_hidden_dim=48)
    with pytest.raises(ValueError, match="teacher's width is 48"):
        TIPSv2Distiller(teacher, tiny_student(), teacher_head=head)


def test_missing_caption_is_a_clear_error():
    model = TIPSv2Distiller(tiny_teacher(), tiny_student(), mode="features")
    batch = make_batch(batch=2)
    del batch["caption"]
    with pytest.raises(ValueError, match="caption"):
        model.compute_losses(batch)


def test_feature_matching_losses_match_numpy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 3, 5)).astype("float32")
    t = rng.normal(size=(2, 3, 5)).astype("float32")
    cos = np.sum(s * t, -1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)
    np.testing.assert_allclose(
        float(losses.feature_matching_loss(s, t, "cosine")), np.mean(1 - cos), rtol=1e-5
    )
    d = np.abs(s - t)
    huber = np.where(d < 1.0, 0.5 * d**2, d - 0.5)
    np.testing.assert_allclose(
        float(losses.feature_matching_loss(s, t, "smooth_l1")), huber.mean(), rtol=1e-5
    )
    assert float(losses.feature_matching_loss(t, t, "cosine")) == pytest.approx(0.0, abs=1e-6)


# --- The recipe ---------------------------------------------------------------


def write_teacher_preset(directory):
    """A tiny random teacher, 64 wide like the recipe's tiny student, with
    the tiny SentencePiece tokenizer of tests/spm_utils.py."""
    from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter
    from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
    from tests.spm_utils import tiny_spm_bytes

    teacher = TIPSv2Backbone(
        **tiny_backbone_kwargs(
            vision_hidden_dim=64, text_hidden_dim=64, vision_num_layers=3,
            text_vocabulary_size=150,
        )
    )  # fmt: skip
    teacher.save_to_preset(directory)
    TIPSv2Tokenizer(proto=tiny_spm_bytes(), sequence_length=16).save_to_preset(directory)
    TIPSv2ImageConverter(image_size=(56, 56)).save_to_preset(directory)
    return teacher


def load_distill_recipe():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "distill.py")
    spec = importlib.util.spec_from_file_location("distill_recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def test_distill_recipe_exports_a_student_preset_that_segments_zero_shot(tmp_path):
    import json
    import os

    from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
    from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter

    keras.utils.set_random_seed(0)
    teacher = write_teacher_preset(str(tmp_path / "teacher"))
    out = load_distill_recipe().main(
        ["--teacher", str(tmp_path / "teacher"), "--student-config", "tiny", "--quick",
         "--output", str(tmp_path / "run"), "--verbose", "0"]
    )  # fmt: skip
    assert out["train"]["text_tower"] == "teacher" and out["train"]["steps"] == 4
    assert os.path.exists(tmp_path / "run" / "log.csv")
    # The held-out ShapesWorld report, the student beside its teacher.
    student_miou = out["evaluation"]["student"]["segmentation"]["shape"]["values"]
    teacher_miou = out["evaluation"]["teacher"]["segmentation"]["shape"]["values"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| | student | teacher | student − teacher |" in report
    assert f"| mIoU shape, values (TIPS) | {100 * student_miou:.1f} | {100 * teacher_miou:.1f} |" in report
    with open(tmp_path / "run" / "results.json") as f:
        assert set(json.load(f)["evaluation"]) == {"student", "teacher"}

    student = TIPSv2Backbone.from_preset(out["preset"])
    # The student's 2-layer image tower, paired with the teacher's text tower.
    assert student.vision_num_layers == 2 and student.text_num_layers == 2
    for a, b in zip(teacher.text_encoder.weights, student.text_encoder.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    segmenter = TIPSv2ZeroShotSegmenter(
        student,
        TIPSv2Tokenizer.from_preset(out["preset"], sequence_length=student.text_max_sequence_length),
        short_side=None, window_size=56, window_stride=56,
    )  # fmt: skip
    segmenter.set_classes(["cat", "dog", "bird"], templates=["a photo of the {}."])
    image = np.random.default_rng(0).uniform(size=(56, 56, 3)).astype("float32")
    result = segmenter.segment(image, mode="whole")
    assert result["labels"].shape == (56, 56) and result["scores"].shape == (56, 56, 3)
    assert set(np.unique(result["labels"])) <= {0, 1, 2}


def test_half_width_student_keeps_the_teachers_architecture_at_half_its_width():
    from tests.spm_utils import tiny_spm_bytes

    teacher = TIPSv2Backbone(
        **tiny_backbone_kwargs(
            vision_layer_scale=True, vision_layer_scale_init=[1e-5, 1.0], text_vocabulary_size=150
        )
    )
    recipe = load_distill_recipe()
    student = recipe.teacher_shaped_student(teacher, tiny_spm_bytes(), half_width=True)
    assert (student.vision_hidden_dim, student.text_hidden_dim) == (16, 16)
    assert (student.vision_intermediate_dim, student.text_intermediate_dim) == (32, 32)
    config = student.get_config()
    assert config["vision_layer_scale_init"] == [1e-5, 1.0]
    assert config["vision_num_layers"] == 2 and config["vision_num_heads"] == 4
    same = recipe.teacher_shaped_student(teacher, tiny_spm_bytes(), half_width=False)
    assert same.count_params() == teacher.count_params()
