"""Shared pieces of the benchmark scripts: shapes, builders, timing, FLOPs, output.

Benchmarks are scripts, not tests. Each script runs on the backend named by
KERAS_BACKEND (one backend per process, as Keras requires), prints a table
and can write JSON. Times are medians over repeats; the machine these were
written on is a shared 2-core CPU, so only ratios measured in one run are
meaningful.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

# === Shapes ===
# B/14: the TIPSv2-B/14 image and text towers.
B14 = dict(hidden=768, layers=12, heads=12, mlp=3072, vocab=32000, seq=64, patch=14)
# Tiny: what `--quick` runs, so every script can be smoke-tested in seconds.
TINY = dict(hidden=64, layers=2, heads=4, mlp=128, vocab=128, seq=16, patch=14)


def hf_config(shape):
    """A transformers Tipsv2Config of the given shape (v2: 448 px, 32x32 grid)."""
    from transformers import Tipsv2Config

    return Tipsv2Config(
        vision_config=dict(
            hidden_size=shape["hidden"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            mlp_ratio=shape["mlp"] // shape["hidden"],
            image_size=448,
            patch_size=shape["patch"],
        ),
        text_config=dict(
            hidden_size=shape["hidden"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            intermediate_size=shape["mlp"],
            vocab_size=shape["vocab"],
            max_position_embeddings=shape["seq"],
        ),
    )


def hf_model(shape, seed=0):
    """transformers' Tipsv2Model at random (default-initialised) weights, eval mode."""
    import torch
    from transformers import Tipsv2Model

    torch.manual_seed(seed)
    return Tipsv2Model(hf_config(shape)).eval()


def backbone_from(model, dtype=None, **overrides):
    """Our TIPSv2Backbone holding exactly the weights of the transformers
    model (keyword arguments override its config)."""
    from keras_tipsv2.convert import backbone_from_hf

    return backbone_from_hf(
        model.config.to_dict(), model.state_dict(), dtype=dtype, **overrides
    )


def dinov2_backbone(shape, size, dtype=None):
    """KerasHub's DINOV2Backbone of the same shape: the Keras ViT to beat."""
    import keras_hub

    return keras_hub.models.DINOV2Backbone(
        patch_size=shape["patch"],
        num_layers=shape["layers"],
        hidden_dim=shape["hidden"],
        num_heads=shape["heads"],
        intermediate_dim=shape["mlp"],
        num_register_tokens=1,
        image_shape=(size, size, 3),
        position_embedding_shape=(448, 448, 3),
        dtype=dtype,
    )


# === Timing ===


def timed(fn, repeats, warmup=1):
    """(first-call seconds, median seconds, all seconds) of `fn()`.

    `fn` must block until its result is ready (convert to numpy or call
    `block_until_ready`), or asynchronous backends look free.
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), times


def timed_interleaved(fns, repeats):
    """{name: (first-call seconds, median seconds, all seconds)} of each fn.

    Each fn is called once (its first call, compilation included), then the
    timed calls go round-robin, one per fn per round, the order rotating
    each round. Timing one implementation's repeats after another's lets
    the machine's drift land on one side of the ratio: on this shared
    2-core machine two block-timed runs put ours at 0.72x and, interleaved
    minutes later, 1.03x transformers at 448 px on torch.
    """
    names = list(fns)
    firsts, times = {}, {name: [] for name in names}
    for name in names:
        start = time.perf_counter()
        fns[name]()
        firsts[name] = time.perf_counter() - start
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (firsts[name], statistics.median(times[name]), times[name]) for name in names}


def to_numpy_tree(tree):
    """Blocks on and fetches any nest of backend tensors."""
    import keras

    return keras.tree.map_structure(lambda x: keras.ops.convert_to_numpy(x), tree)


# === FLOPs ===


def image_tower_flops(shape, height, width, batch):
    """Multiply-adds x 2 of one image-tower forward, counted analytically.

    Patch embed (a 14x14x3 -> D matmul per patch), per block qkv (3 D^2),
    attention logits and weighted sum (2 N^2 D), output projection (D^2),
    MLP (2 D M) -- per token, times 2 for multiply and add. LayerNorms,
    GELU, softmax and the position resize are not counted (they are
    O(N D), under 1 % here).
    """
    p, d, m, layers = shape["patch"], shape["hidden"], shape["mlp"], shape["layers"]
    patches = (-(-height // p)) * (-(-width // p))
    tokens = patches + 2
    embed = patches * (p * p * 3) * d
    per_block = tokens * (3 * d * d + d * d + 2 * d * m) + 2 * tokens * tokens * d
    return 2 * batch * (embed + layers * per_block)


def text_tower_flops(shape, batch, length):
    d, m, layers = shape["hidden"], shape["mlp"], shape["layers"]
    per_block = length * (4 * d * d + 2 * d * m) + 2 * length * length * d
    return 2 * batch * layers * per_block


def matmul_rates(size=2048, repeats=5):
    """Best float32 GFLOP/s of one size x size matmul through XLA, numpy and torch."""
    flops = 2 * size**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype("float32")
    b = rng.standard_normal((size, size)).astype("float32")
    rates = {}

    def best(fn):
        fn()
        return flops / min(timed(fn, repeats)[2]) / 1e9

    rates["numpy"] = best(lambda: a @ b)
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        rates["torch"] = best(lambda: ta @ tb)
    except ImportError:
        pass
    try:
        import jax

        ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
        mm = jax.jit(lambda x, y: x @ y)
        rates["xla (jax)"] = best(lambda: mm(ja, jb).block_until_ready())
    except ImportError:
        pass
    return rates


# === Output ===


def machine():
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
    }
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    try:
        model = subprocess.run(
            ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"],
            capture_output=True, text=True, check=False,
        ).stdout
        info["cpu"] = model.split(":", 1)[-1].strip()
    except OSError:
        pass
    for name in ("keras", "jax", "tensorflow", "torch", "transformers", "keras_hub"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def print_table(rows, columns):
    """Prints rows (dicts) as an aligned text table of the given columns."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for line in cells:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)))
    sys.stdout.flush()


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def write_json(path, payload):
    if not path:
        return
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    print(f"wrote {path}")
