"""Published TIPS / TIPSv2 models under short names.

The v2 models point at their Hugging Face repositories and are converted on
the fly; the v1 models point at the official PyTorch npz pair
(`tips-npz://` + the common URL prefix, `_vision.npz` / `_text.npz` appended).
Neither can be fetched without network access; `TIPSv2Backbone.from_preset`
then says how to convert local files instead.
"""

import os

_GCS = "https://storage.googleapis.com/tips_data"
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hf(name, description, params):
    return {
        "metadata": {
            "description": description,
            "params": params,
            "path": "tipsv2",
            "official_name": "TIPSv2",
        },
        "kaggle_handle": f"hf://google/{name}",
    }


def _v1(name, description, params):
    return {
        "metadata": {
            "description": description,
            "params": params,
            "path": "tipsv2",
            "official_name": "TIPS",
        },
        "kaggle_handle": f"tips-npz://{_GCS}/v1_0/checkpoints/pytorch/{name}",
    }


backbone_presets = {
    "tipsv2_b14": _hf("tipsv2-b14", "TIPSv2 B/14, 448 px (distilled).", 195_300_000),
    "tipsv2_l14": _hf("tipsv2-l14", "TIPSv2 L/14, 448 px (distilled).", 487_100_000),
    "tipsv2_so400m14": _hf("tipsv2-so400m14", "TIPSv2 So400m/14, 448 px, 27-layer text tower.", 860_700_000),
    "tipsv2_g14": _hf("tipsv2-g14", "TIPSv2 g/14, 448 px (SwiGLU).", 1_489_100_000),
    "tips_s14_highres": _v1("tips_oss_s14_highres_distilled", "TIPS v1 S/14 high-res (distilled).", 55_200_000),
    "tips_b14_highres": _v1("tips_oss_b14_highres_distilled", "TIPS v1 B/14 high-res (distilled).", 195_300_000),
    "tips_l14_highres": _v1("tips_oss_l14_highres_distilled", "TIPS v1 L/14 high-res (distilled).", 487_100_000),
    "tips_so400m14_highres": _v1("tips_oss_so400m14_highres_largetext_distilled", "TIPS v1 So400m/14 high-res.", 860_700_000),
    "tips_g14_highres": _v1("tips_oss_g14_highres", "TIPS v1 g/14 high-res.", 1_489_100_000),
    "tips_g14_lowres": _v1("tips_oss_g14_lowres", "TIPS v1 g/14 low-res (224 px, 16x16 grid).", 1_489_100_000),
}

# Presets trained by this project and shipped inside the package.
_TINY = os.path.join(_HERE, "presets", "tipsv2_tiny_shapes")
if os.path.exists(os.path.join(_TINY, "config.json")):
    backbone_presets["tipsv2_tiny_shapes"] = {
        "metadata": {
            "description": "Tiny TIPSv2 (width 128, patch 8, 64 px) pretrained on ShapesWorld "
            "by recipes/pretrain.py; offline demo, see its TRAINING.md.",
            "params": 1_257_217,
            "path": "tipsv2",
            "official_name": "TIPSv2",
        },
        "kaggle_handle": _TINY,
    }
