"""Inference speed of keras_tipsv2 against transformers and KerasHub, one backend per run.

Times, on the same random weights and inputs:
- the image tower (B/14; 224 and 448 px; batch 8; float32 and bfloat16) of
  keras_tipsv2 compiled the backend's way (jax.jit / tf.function /
  torch eager, or torch.compile with --torch-compile), through the public
  `encode_images`, KerasHub's DINOV2Backbone of the same shape compiled the
  same way, and transformers' Tipsv2Model (torch);
- the text tower (batch 64, length 64) the same ways (no DINOv2 there);
- the public calls users make: encode_images, encode_text, predict (both
  towers) and the zero-shot segmentation protocol on one 448x672 image;
- achieved GFLOP/s of the image tower against the best float32 matmul rate.

Usage (from the repository root):
    KERAS_BACKEND=jax python benchmarks/bench_inference.py --json jax.json
    KERAS_BACKEND=jax python benchmarks/bench_inference.py --quick   # seconds
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from keras_tipsv2 import kernels  # noqa: E402
from keras_tipsv2.kernels import policy  # noqa: E402

BACKEND = keras.config.backend()


def compiled(layer, torch_compile=False, tf_xla=False):
    """`layer`'s forward compiled the way its backend does best, as fn(*args).

    TensorFlow: a plain `tf.function` (graph + oneDNN) unless `tf_xla`
    (XLA, as `encode_images` compiles the image tower).
    """
    if BACKEND == "jax":
        import jax

        @jax.jit
        def run(trainable, non_trainable, args):
            return layer.stateless_call(trainable, non_trainable, *args)[0]

        def call(*args):
            trainable = [v.value for v in layer.trainable_variables]
            non_trainable = [v.value for v in layer.non_trainable_variables]
            return run(trainable, non_trainable, args)

        return call
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda *args: layer(*args), jit_compile=tf_xla)
    if torch_compile:
        fn = torch.compile(lambda *args: layer(*args))
    else:
        fn = lambda *args: layer(*args)  # noqa: E731

    def call(*args):
        with torch.no_grad():
            return fn(*args)

    return call


def inference(call, *args):
    """`call(*args)` the way users run inference on this backend.

    On torch that is inside `torch.no_grad()`, the idiom for every torch
    model (transformers' rows below are timed the same way): our public
    calls keep autograd's semantics, so gradients flow when a user wants
    them, and recording them costs time and memory.
    """
    if BACKEND == "torch":
        with torch.no_grad():
            return call(*args)
    return call(*args)


def timed_row(name, impl, fn, repeats, **fields):
    first, median, times = c.timed(fn, repeats)
    return _row(name, impl, (first, median, times), **fields)


def _row(name, impl, timing, **fields):
    first, median, times = timing
    row = dict(case=name, impl=impl, first_s=first, median_s=median, runs=len(times), times_s=times, **fields)
    print(f"  {name:<14} {impl:<34} first {first:8.3f}s  median {median:8.3f}s", flush=True)
    return row


def interleaved_rows(name, fns, repeats, **fields):
    """One row per implementation, timed round-robin in one loop."""
    timings = c.timed_interleaved(fns, repeats)
    return [_row(name, impl, timing, **fields) for impl, timing in timings.items()]


def kernel_variants(args, call):
    """{label suffix: fn} timing `call` as the kernel policy chose, and, as
    asked, with every kernel off and with each active kernel off alone; the
    compiled functions are cached per kernel state, so each variant keeps
    its own."""

    def without(names):
        def run():
            kernels.set_enabled(False, names)
            try:
                return call()
            finally:
                kernels.set_enabled(True)

        return run

    variants = {"": call}
    active = list(policy.state())
    if active and not args.skip_kernels_off:
        variants[" (kernels off)"] = without(None)
    if args.kernel_ablation and len(active) > 1:
        for name in active:
            variants[f" (without {name})"] = without([name])
    return variants


def image_rows(args, shape, hf, size, dtype):
    batch = args.batch
    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, 3)).astype("float32")
    repeats = args.repeats if size <= 224 else args.repeats_large
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    fields = dict(size=size, dtype=dtype, batch=batch, flops=c.image_tower_flops(shape, size, size, batch))
    ours = c.backbone_from(hf, dtype=dtype)
    x = keras.ops.convert_to_tensor(images, dtype=dtype)
    encode = lambda: c.to_numpy_tree(inference(ours.encode_images, images))  # noqa: E731
    fns = {
        f"keras_tipsv2 encode_images{label}": fn
        for label, fn in kernel_variants(args, encode).items()
    }
    if BACKEND == "torch" and args.torch_grad_rows:
        # What the same call costs when autograd records it (no no_grad).
        fns["keras_tipsv2 encode_images (grad)"] = lambda: c.to_numpy_tree(ours.encode_images(images))
    if not args.skip_dinov2:
        dino = compiled(c.dinov2_backbone(shape, size, dtype=dtype), args.torch_compile, not args.tf_graph)
        fns["kerashub DINOV2 compiled"] = lambda: c.to_numpy_tree(dino(x))
    hf_model = hf.to(torch_dtype)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(torch_dtype)

    def hf_image():
        with torch.no_grad():
            return hf_model.vision_model(pixel_values=pixels).last_hidden_state.float().numpy()

    fns["transformers Tipsv2Model"] = hf_image
    rows = interleaved_rows("image", fns, repeats, **fields)
    hf.to(torch.float32)
    return rows


def text_rows(args, shape, hf, dtype):
    batch, length = args.text_batch, shape["seq"]
    rng = np.random.default_rng(1)
    ids = rng.integers(1, shape["vocab"], (batch, length)).astype("int32")
    lengths = rng.integers(4, length + 1, batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype("int32")
    fields = dict(size=length, dtype=dtype, batch=batch, flops=c.text_tower_flops(shape, batch, length))
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    ours = c.backbone_from(hf, dtype=dtype)
    hf_model = hf.to(torch_dtype)
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask)

    def hf_text():
        with torch.no_grad():
            return hf_model.text_model(input_ids=t_ids, attention_mask=t_mask).pooler_output.float().numpy()

    encode = lambda: c.to_numpy_tree(inference(ours.encode_text, ids, mask))  # noqa: E731
    fns = {
        f"keras_tipsv2 encode_text{label}": fn
        for label, fn in kernel_variants(args, encode).items()
    }
    fns["transformers Tipsv2Model"] = hf_text
    rows = interleaved_rows("text", fns, args.repeats, **fields)
    hf.to(torch.float32)
    return rows


def public_rows(args, shape, hf):
    """predict and zero-shot segmentation, float32 (encode_* are timed above)."""
    from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter

    ours = c.backbone_from(hf)
    rng = np.random.default_rng(2)
    size = args.sizes[0]
    batch = args.batch
    inputs = {
        "images": rng.random((batch, size, size, 3)).astype("float32"),
        "token_ids": rng.integers(1, shape["vocab"], (batch, shape["seq"])).astype("int32"),
        "padding_mask": np.ones((batch, shape["seq"]), "int32"),
    }
    fields = dict(size=size, dtype="float32", batch=batch)
    rows = [
        timed_row(
            "predict", "keras_tipsv2 predict",
            lambda: ours.predict(inputs, batch_size=batch, verbose=0), args.repeats, **fields,
        )
    ]
    # One 448x672 image (scaled down with --quick): short side 448, TCL
    # windows of 448 with stride 336 -> two windows, one backbone batch.
    short = args.seg_short_side
    image = (rng.random((short, short * 3 // 2, 3)) * 255).astype("uint8")
    segmenter = TIPSv2ZeroShotSegmenter(
        ours, short_side=short, window_size=short, window_stride=short * 3 // 4
    )
    segmenter.set_class_embeddings(rng.standard_normal((150, shape["hidden"])).astype("float32"))
    rows.append(
        timed_row(
            "segment", "keras_tipsv2 segment slide",
            lambda: segmenter.segment(image, mode="slide"), args.repeats_large,
            size=f"{short}x{short * 3 // 2}", dtype="float32", batch=1,
        )
    )
    return rows


def add_ratios(rows, matmul_best):
    """ours / reference throughput ratios (time_ref / time_ours) per (case, size, dtype)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["case"], row["size"], row["dtype"]), {})[row["impl"]] = row
    for group in groups.values():
        hf_row = group.get("transformers Tipsv2Model")
        dino = group.get("kerashub DINOV2 compiled")
        for impl, row in group.items():
            if not impl.startswith("keras_tipsv2"):
                continue
            if hf_row:
                row["x_vs_hf"] = hf_row["median_s"] / row["median_s"]
            if dino:
                row["x_vs_dinov2"] = dino["median_s"] / row["median_s"]
    for row in rows:
        row["items_per_s"] = row["batch"] / row["median_s"]
        if "flops" in row and row["case"] == "image":
            row["gflop_per_s"] = row["flops"] / row["median_s"] / 1e9
            row["pct_of_matmul"] = 100 * row["gflop_per_s"] / matmul_best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes; runs in seconds")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs at <= 224 px (median reported)")
    parser.add_argument("--repeats-large", type=int, default=2, help="timed runs above 224 px")
    parser.add_argument("--seg-short-side", type=int, default=448)
    parser.add_argument("--skip-dinov2", action="store_true")
    parser.add_argument("--skip-public", action="store_true", help="skip predict and segmentation")
    parser.add_argument("--torch-compile", action="store_true", help="torch backend: torch.compile the towers")
    parser.add_argument("--tf-graph", action="store_true", help="tensorflow backend: DINOv2 as a plain graph instead of under XLA (jit_compile, as encode_images runs)")
    parser.add_argument("--skip-kernels-off", action="store_true", help="skip the rows with keras_tipsv2.kernels switched off")
    parser.add_argument("--kernel-ablation", action="store_true", help="also time each active kernel switched off alone")
    parser.add_argument("--torch-grad-rows", action="store_true", help="torch backend: also time encode_images with autograd recording")
    parser.add_argument("--json", help="write rows and machine info here")
    args = parser.parse_args()
    shape = c.B14
    if args.quick:
        shape = c.TINY
        args.sizes, args.batch, args.text_batch = [56], 2, 4
        args.repeats, args.repeats_large, args.seg_short_side = 2, 1, 56

    torch.set_num_threads(os.cpu_count())
    info = c.machine()
    print(f"backend={BACKEND} cpus={info['cpus']} load={info.get('load_average')}", flush=True)
    print(kernels.describe(), flush=True)
    matmul = c.matmul_rates(256 if args.quick else 2048)
    print("best float32 matmul GFLOP/s:", {k: round(v) for k, v in matmul.items()}, flush=True)
    hf = c.hf_model(shape)
    rows = []
    for dtype in args.dtypes:
        for size in args.sizes:
            rows += image_rows(args, shape, hf, size, dtype)
        rows += text_rows(args, shape, hf, dtype)
    if not args.skip_public:
        rows += public_rows(args, shape, hf)
    add_ratios(rows, max(matmul.values()))
    print()
    c.print_table(
        rows,
        ["case", "impl", "size", "dtype", "batch", "first_s", "median_s", "items_per_s",
         "x_vs_hf", "x_vs_dinov2", "gflop_per_s", "pct_of_matmul"],
    )
    c.write_json(args.json, dict(machine=info, matmul_gflop_per_s=matmul, args=vars(args), rows=rows))


if __name__ == "__main__":
    main()
