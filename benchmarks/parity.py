"""Max abs difference to transformers' Tipsv2Model, per checkpoint layout and input size.

    KERAS_BACKEND=jax python benchmarks/parity.py

Random weights, float32, the readers of all three layouts (Hugging Face,
official PyTorch npz, official Scenic npz), as in tests/test_hf_parity.py;
prints one Markdown row per (layout, size) for the current backend.
"""

import os
import sys

import keras
import numpy as np
from keras import ops

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import checkpoint_writers as cw  # noqa: E402

SIZES = [(448, 448), (224, 224), (280, 420)]


def main():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (3, 12)).astype("int32")
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    print("| backend | layout | size | CLS tokens | patch tokens | text | temperature |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for layout in ("hf", "pytorch", "scenic"):
        for swiglu in (False, True):
            model = cw.tiny_hf_model(seed=1, layout=layout, swiglu=swiglu)
            backbone = cw.backbone_in_layout(model, layout)
            for size in SIZES if not swiglu else SIZES[-1:]:
                images = rng.random((2,) + size + (3,)).astype("float32")
                cls_ref, patch_ref, text_ref, t_ref = cw.hf_outputs(model, images, ids, mask)
                out = backbone.encode_images(images)
                cls = np.abs(ops.convert_to_numpy(out["cls_tokens"]) - cls_ref).max()
                patches = ops.convert_to_numpy(out["patch_tokens"]).reshape(patch_ref.shape)
                text = ops.convert_to_numpy(backbone.encode_text(ids, mask))
                t = abs(float(ops.convert_to_numpy(backbone.temperature)) - t_ref)
                name = layout + (" (SwiGLU)" if swiglu else "")
                print(
                    f"| {keras.backend.backend()} | {name} | {size[0]}x{size[1]} | {cls:.1e} | "
                    f"{np.abs(patches - patch_ref).max():.1e} | {np.abs(text - text_ref).max():.1e} | {t:.1e} |"
                )


if __name__ == "__main__":
    main()
