"""DPT dense heads: parity with transformers' Tipsv2Dpt, conversion, training.

The oracle is transformers' independent Tipsv2Dpt at random weights (tiny:
width 32, 4 blocks, fusion 16 channels). Its image tower reaches our
backbone through `backbone_from_hf`; its heads reach ours through the
`transformers` converter, and through a synthetic official-layout Flax zip
written here with the inverse mapping. Float32, <= 1e-4.
"""

import io
import zipfile

import keras
import numpy as np
import pytest
import torch
from keras import ops
from transformers import (
    Tipsv2Config,
    Tipsv2DptConfig,
    Tipsv2DptForDensePrediction,
    Tipsv2Model,
)

from keras_tipsv2.convert.dpt import (
    DPTConversionError,
    dense_task_from_flax_zip,
    dense_task_from_hf,
    dense_task_kwargs_from_hf,
    hf_prefixes,
    load_hf_dpt_head,
)
from keras_tipsv2.convert.hf import backbone_from_hf
from keras_tipsv2.evaluation.foreground_probe import (
    ForegroundProbe,
    average_precision,
    confident_patches,
    fit_logistic_regression,
    median_filter_3x3,
    patch_mask_means,
)
from keras_tipsv2.layers.dpt import TIPSv2DPTHead, upsample_2x_align_corners
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_dense_tasks import (
    TIPSv2DenseSegmenter,
    TIPSv2DepthEstimator,
    TIPSv2NormalEstimator,
    default_intermediate_indices,
)
from tests.conftest import tiny_backbone_kwargs

TOLERANCE = 1e-4
NUM_LAYERS = 4
NUM_CLASSES = 5
NUM_BINS = 16
TASKS = ("depth", "normals", "segmentation")
OUTPUT_KEY = {"depth": "depths", "normals": "normals", "segmentation": None}

VISION = dict(
    hidden_size=32,
    num_hidden_layers=NUM_LAYERS,
    num_attention_heads=4,
    mlp_ratio=2,
    image_size=56,
    patch_size=14,
)
TEXT = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=48,
    vocab_size=64,
    max_position_embeddings=16,
)


def _randomise(module, scale=0.3):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "temperature":
                p.fill_(0.05)  # the checkpoint's scalar must stay positive
            else:
                p.copy_(torch.randn_like(p) * scale)


@pytest.fixture(scope="module")
def hf():
    """(Tipsv2Model, Tipsv2DptForDensePrediction) sharing one image tower."""
    torch.manual_seed(0)
    clip = Tipsv2Model(Tipsv2Config(vision_config=VISION, text_config=TEXT)).eval()
    _randomise(clip)
    dpt_config = Tipsv2DptConfig(
        backbone_config=dict(
            model_type="tipsv2_vision_model",
            out_indices=[1, 2, 3, 4],
            apply_layernorm=True,
            reshape_hidden_states=False,
            **VISION,
        ),
        neck_hidden_sizes=[4, 8, 16, 32],
        fusion_hidden_size=16,
        num_labels=NUM_CLASSES,
        num_depth_bins=NUM_BINS,
    )
    dpt = Tipsv2DptForDensePrediction(dpt_config).eval()
    # Small weights keep the 4-level conv stack in a sane range.
    _randomise(dpt, scale=0.15)
    dpt.backbone.load_state_dict(clip.vision_model.state_dict())
    return clip, dpt


@pytest.fixture(scope="module")
def backbone(hf):
    clip, _ = hf
    state = {k: v.numpy() for k, v in clip.state_dict().items()}
    return backbone_from_hf(clip.config.to_dict(), state)


@pytest.fixture(scope="module")
def dpt_state(hf):
    return {k: v.numpy() for k, v in hf[1].state_dict().items()}


def _images(size, seed=1):
    return np.random.default_rng(seed).random((2, size, size, 3)).astype("float32")


def _reference(dpt, images, task):
    """transformers' outputs after its own post-processing, channels-last."""
    size = images.shape[1:3]
    resize = lambda x: torch.nn.functional.interpolate(  # noqa: E731
        x, size=size, mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        out = dpt(torch.from_numpy(images).permute(0, 3, 1, 2))
        if task == "depth":
            result = resize(out.predicted_depth[:, None])
        elif task == "normals":
            unit = torch.nn.functional.normalize(out.normals, dim=1)
            # Our contract adds a re-normalisation after resizing (the
            # official notebook's), so every pixel is a unit vector.
            result = torch.nn.functional.normalize(resize(unit), dim=1)
        else:
            result = resize(out.segmentation_logits)
    return result.permute(0, 2, 3, 1).numpy()


def _ours(model, images, task):
    out = model(images)
    if OUTPUT_KEY[task]:
        out = out[OUTPUT_KEY[task]]
    return ops.convert_to_numpy(out)


def test_upsample_2x_align_corners_matches_torch():
    x = np.random.default_rng(0).random((2, 3, 5, 4)).astype("float32")
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        scale_factor=2,
        mode="bilinear",
        align_corners=True,
    )
    out = ops.convert_to_numpy(upsample_2x_align_corners(x))
    assert out.shape == (2, 6, 10, 4)
    np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_default_intermediate_indices_reproduce_published_choices():
    assert default_intermediate_indices(12) == [2, 5, 8, 11]  # B
    assert default_intermediate_indices(24) == [5, 11, 17, 23]  # L
    assert default_intermediate_indices(27) == [6, 13, 20, 26]  # So
    assert default_intermediate_indices(40) == [9, 19, 29, 39]  # g
    assert default_intermediate_indices(4) == [0, 1, 2, 3]


def test_hf_config_gives_task_arguments(hf):
    kwargs = dense_task_kwargs_from_hf(hf[1].config.to_dict(), "depth")
    assert kwargs["intermediate_indices"] == [0, 1, 2, 3]
    assert kwargs["post_process_channels"] == [4, 8, 16, 32]
    assert kwargs["num_depth_bins"] == NUM_BINS
    assert kwargs["project_activation"] == "relu"


# 56 px is the native 4x4 grid; 42 px is an odd 3x3 grid, where the fusion
# blocks must resize their skips (and the position table is resized). The
# head is shared by all tasks, so one task covers the odd grid.
@pytest.mark.parametrize(
    "task, size", [("depth", 56), ("normals", 56), ("segmentation", 56), ("segmentation", 42)]
)
def test_task_matches_transformers(hf, backbone, dpt_state, task, size):
    model = dense_task_from_hf(hf[1].config.to_dict(), dpt_state, task, backbone)
    images = _images(size)
    ours = _ours(model, images, task)
    ref = _reference(hf[1], images, task)
    assert ours.shape == ref.shape
    # Guard against a vacuous match: the maps must vary over the image.
    assert np.std(ref) > 1e-2
    np.testing.assert_allclose(ours, ref, atol=TOLERANCE, rtol=0)


def _torch_to_flax(state, neck, decoder, head_name):
    """The inverse of the official Flax -> PyTorch decoder conversion."""
    conv = lambda w: w.transpose(2, 3, 1, 0)  # noqa: E731  OIHW -> HWIO
    out = {}

    def put(flax_key, torch_key, kind="conv"):
        w = state[torch_key + ".weight"]
        if kind == "dense":
            w = w.T
        elif kind == "conv_transpose":
            # torch (in, out, kh, kw) -> Flax (kh, kw, in, out), unflipped.
            w = w.transpose(2, 3, 0, 1)[::-1, ::-1]
        else:
            w = conv(w)
        out[f"decoder/{flax_key}/kernel"] = np.ascontiguousarray(w)
        if torch_key + ".bias" in state:
            out[f"decoder/{flax_key}/bias"] = state[torch_key + ".bias"]

    rb, rs = "dpt/reassemble_blocks", neck + "reassemble_stage"
    for k in range(4):
        put(f"{rb}/readout_projects_{k}", f"{rs}.readout_projects.{k}.layers.0", "dense")
        put(f"{rb}/out_projection_{k}", f"{rs}.layers.{k}.projection")
        if k in (0, 1):
            put(f"{rb}/resize_layers_{k}", f"{rs}.layers.{k}.resize", "conv_transpose")
        if k == 3:
            put(f"{rb}/resize_layers_{k}", f"{rs}.layers.{k}.resize")
        put(f"dpt/convs_{k}", f"{neck}convs.{k}")
        fs, fb = f"{neck}fusion_stage.layers.{k}", f"dpt/fusion_blocks_{k}"
        units = ["residual_layer2"] if k == 0 else ["residual_layer1", "residual_layer2"]
        for u, unit in enumerate(units):
            for c in (1, 2):
                put(f"{fb}/PreActResidualConvUnit_{u}/conv{c}", f"{fs}.{unit}.convolution{c}")
        put(f"{fb}/Conv_0", f"{fs}.projection")
    put("dpt/project", decoder + "project")
    put(head_name, decoder + "head", "dense")
    return out


def _zip_bytes(arrays):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.save(member, value)
            archive.writestr(key + ".npy", member.getvalue())
    return buffer.getvalue()


FLAX_HEADS = {
    "depth": "pixel_depth_classif",
    "normals": "pixel_normals",
    "segmentation": "segmentation_head",
}


@pytest.mark.parametrize("task", TASKS)
def test_flax_zip_head_reproduces_transformers(hf, backbone, dpt_state, task):
    arrays = _torch_to_flax(dpt_state, *hf_prefixes(dpt_state, task), FLAX_HEADS[task])
    if task == "depth":
        arrays["decoder/bin_centers"] = np.linspace(0.001, 10.0, NUM_BINS)
    kwargs = dense_task_kwargs_from_hf(hf[1].config.to_dict(), task)
    model = dense_task_from_flax_zip(_zip_bytes(arrays), task, backbone, **kwargs)
    images = _images(56, seed=3)
    np.testing.assert_allclose(
        _ours(model, images, task), _reference(hf[1], images, task), atol=TOLERANCE, rtol=0
    )


def _head():
    return TIPSv2DPTHead(32, 3, post_process_channels=(4, 8, 16, 32), fusion_channels=16)


def test_hf_conversion_names_a_missing_key(dpt_state):
    state = dict(dpt_state)
    del state["normals_neck.convs.2.weight"]
    with pytest.raises(DPTConversionError, match=r"normals_neck\.convs\.2\.weight"):
        load_hf_dpt_head(_head(), state, "normals_neck.", "normals_decoder.")


def test_hf_conversion_names_an_unexpected_key(dpt_state):
    state = dict(dpt_state, **{"normals_neck.convs.9.weight": np.zeros((16, 4, 3, 3))})
    with pytest.raises(DPTConversionError, match=r"unexpected.*normals_neck\.convs\.9"):
        load_hf_dpt_head(_head(), state, "normals_neck.", "normals_decoder.")


def test_hf_conversion_names_a_misshaped_key_and_both_shapes(dpt_state):
    state = dict(dpt_state)
    state["normals_decoder.head.weight"] = np.zeros((4, 16), "float32")
    with pytest.raises(
        DPTConversionError, match=r"normals_decoder\.head\.weight.*\(4, 16\).*\(16, 3\)"
    ):
        load_hf_dpt_head(_head(), state, "normals_neck.", "normals_decoder.")


def test_head_rejects_wrong_number_of_levels():
    head = _head()
    cls, patches = np.zeros((1, 32), "float32"), np.zeros((1, 2, 2, 32), "float32")
    with pytest.raises(ValueError, match="expects 4"):
        head([(cls, patches)] * 3)


def test_task_rejects_indices_outside_the_tower():
    b = TIPSv2Backbone(**tiny_backbone_kwargs())
    with pytest.raises(ValueError, match=r"\[7\].*2 blocks"):
        TIPSv2DepthEstimator(b, intermediate_indices=[0, 1, 1, 7], fusion_channels=8)


def test_task_config_round_trips():
    b = TIPSv2Backbone(**tiny_backbone_kwargs())
    # The training test's head shapes, so JAX reuses its compiled initialisers.
    model = TIPSv2NormalEstimator(
        b, fusion_channels=8, post_process_channels=(8, 8, 8, 8), intermediate_indices=[0, 0, 1, 1]
    )
    clone = TIPSv2NormalEstimator.from_config(model.get_config())
    assert clone.get_config()["intermediate_indices"] == [0, 0, 1, 1]
    assert clone.head.post_process_channels == (8, 8, 8, 8)
    assert clone.backbone.vision_num_layers == 2


# --- Training a head on frozen features -------------------------------------


def _squares(n, seed, size=28, sides=(8, 16)):
    """Images with one bright square on a dark noisy background, labelled."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, (n, size, size, 3)).astype("float32")
    labels = np.zeros((n, size, size), "int32")
    for i in range(n):
        side = rng.integers(*sides)
        y, x = rng.integers(0, size - side, 2)
        images[i, y : y + side, x : x + side] = rng.uniform(0.7, 1.0, 3)
        labels[i, y : y + side, x : x + side] = 1
    return images, labels


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    b = TIPSv2Backbone(**tiny_backbone_kwargs())
    model = TIPSv2DenseSegmenter(
        b, num_classes=2, fusion_channels=8, post_process_channels=(8, 8, 8, 8)
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    frozen = [ops.convert_to_numpy(w) for w in b.weights]
    x_test, y_test = _squares(16, seed=1)
    before = model.evaluate(x_test, y_test, batch_size=16, verbose=0, return_dict=True)
    x, y = _squares(32, seed=0)
    model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
    after = model.evaluate(x_test, y_test, batch_size=16, verbose=0, return_dict=True)
    return b, frozen, before, after


def test_trained_head_beats_untrained_head_on_held_out_data(trained):
    _, _, before, after = trained
    # Held-out cross-entropy; about 0.85 -> 0.41 on torch after 8 steps.
    assert after["loss"] < 0.7 * before["loss"]


def test_training_leaves_the_backbone_unchanged(trained):
    b, frozen, _, _ = trained
    for w, w0 in zip(b.weights, frozen):
        np.testing.assert_array_equal(ops.convert_to_numpy(w), w0)


# --- Foreground-segmentation linear probe (the official notebook) ---------


def test_patch_mask_means_box_filters_each_patch():
    mask = np.zeros((28, 42))
    mask[:14, :14] = 1.0
    mask[14:, 28:35] = 1.0  # half of the bottom-right patch
    np.testing.assert_allclose(patch_mask_means(mask), [[1, 0, 0], [0, 0, 0.5]])


def test_confident_patches_drop_unclear_ones_and_label_by_positive_mean():
    means = np.array([[0.0, 0.005, 0.5], [0.995, 1.0, 0.02]])
    features = np.arange(6 * 2, dtype="float32").reshape(2, 3, 2)
    x, y = confident_patches(features, means)
    assert x.shape == (4, 2)
    # 0.005 is kept (< 0.01) and, as in the notebook, labelled foreground.
    np.testing.assert_array_equal(y, [0, 1, 1, 1])


def test_logistic_regression_reaches_the_regularised_optimum(rng):
    x = rng.normal(size=(300, 8))
    y = (x @ rng.normal(size=8) + 0.5 * rng.normal(size=300) > 0.3).astype(int)
    w, b = fit_logistic_regression(x, y, c=0.1)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    # Stationarity of 0.5|w|^2 + C sum logloss: w = -C X^T (p - y), sum(p - y) = 0.
    np.testing.assert_allclose(w, -0.1 * x.T @ (p - y), atol=1e-6)
    assert abs(np.sum(p - y)) < 1e-6
    assert np.mean((p > 0.5) == y) > 0.85


def test_average_precision_matches_hand_computed_value():
    ap = average_precision([1, 0, 1, 1], [0.9, 0.8, 0.7, 0.1])
    assert ap == pytest.approx(1 / 3 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 4))


def test_median_filter_matches_scipy_medfilt2d(rng):
    from scipy.signal import medfilt2d

    image = rng.random((5, 7))
    np.testing.assert_allclose(median_filter_3x3(image), medfilt2d(image, 3))


def test_foreground_probe_finds_bright_squares_on_tiny_backbone_features():
    b = TIPSv2Backbone(**tiny_backbone_kwargs())
    images, labels = _squares(12, seed=5, size=56, sides=(24, 34))
    tokens = ops.convert_to_numpy(b.encode_images(images)["patch_tokens"])
    x, y = confident_patches(tokens[:8], patch_mask_means(labels[:8]))
    probe = ForegroundProbe(c=0.1).fit(x, y)
    x_test, y_test = confident_patches(tokens[8:], patch_mask_means(labels[8:]))
    assert average_precision(y_test, probe.predict_proba(x_test)) > 0.8
    assert probe.predict_map(tokens[8]).shape == (4, 4)


def test_cli_converts_a_transformers_decoder_into_a_loadable_task_preset(hf, backbone, tmp_path):
    from keras_tipsv2 import TIPSv2DepthEstimator
    from keras_tipsv2.convert.__main__ import main as convert_main

    backbone.save_to_preset(str(tmp_path / "backbone"))
    hf[1].save_pretrained(tmp_path / "dpt")
    out = tmp_path / "depth"
    code = convert_main(
        ["--dpt", str(tmp_path / "dpt"), "--task", "depth",
         "--backbone", str(tmp_path / "backbone"), "--output", str(out)]
    )
    assert code == 0
    model = TIPSv2DepthEstimator.from_preset(str(out))
    images = _images(56, seed=4)
    np.testing.assert_allclose(
        _ours(model, images, "depth"), _reference(hf[1], images, "depth"), atol=TOLERANCE, rtol=0
    )
