"""Malformed files: one clear error that names the file (and the field).

Each case damages one file of a valid preset (a KerasHub preset, a
`transformers` checkpoint or the official npz pair) and loads it the way a
user would. The error must be of the expected type and its message must
name the damaged file and, where one is at fault, the config field.
Nothing loads with values silently skipped.
"""

import json
import os
import shutil

import h5py
import keras_hub
import numpy as np
import pytest

import keras_tipsv2  # noqa: F401  (registers the loader)
from keras_tipsv2 import TIPSv2Backbone, TIPSv2ImageConverter, TIPSv2Tokenizer
from keras_tipsv2.convert import CheckpointError
from keras_tipsv2.convert.__main__ import main as convert_main
from tests import checkpoint_writers as cw
from tests.conftest import tiny_backbone_kwargs
from tests.spm_utils import train_tiny_spm


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Valid sources to damage: a KerasHub preset (with LayerScale gammas),
    a transformers checkpoint dir and an official npz pair."""
    root = tmp_path_factory.mktemp("valid")
    spm = train_tiny_spm(str(root))
    keras_preset = root / "keras"
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(vision_layer_scale=True))
    backbone.save_to_preset(str(keras_preset))
    TIPSv2Tokenizer(proto=spm, sequence_length=16).save_to_preset(str(keras_preset))
    TIPSv2ImageConverter(image_size=(28, 28)).save_to_preset(str(keras_preset))
    oracle = cw.tiny_hf_model(seed=31, image_size=28)
    oracle.save_pretrained(root / "hf")
    vision, text = cw.to_official_pytorch(cw.state_numpy(oracle), 2, 2)
    (root / "npz").mkdir()
    np.savez(root / "npz" / "m_vision.npz", **vision)
    np.savez(root / "npz" / "m_text.npz", **text)
    shutil.copy(spm, root / "npz" / "tokenizer.model")
    return root


# --- Damage ------------------------------------------------------------------


def edit_json(name, **changes):
    def damage(path):
        with open(path / name) as f:
            config = json.load(f)
        target = config.get("config", config)
        for key, value in changes.items():
            if value is DELETE:
                del target[key]
            else:
                target[key] = value
        with open(path / name, "w") as f:
            json.dump(config, f)

    return damage


DELETE = object()


def write(name, data):
    def damage(path):
        with open(path / name, "wb") as f:
            f.write(data)

    return damage


def truncate(name, keep=0.5):
    def damage(path):
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: int(len(data) * keep)])

    return damage


def remove(name):
    def damage(path):
        os.remove(path / name)

    return damage


def other_weights(path):
    """model.weights.h5 of a wider text MLP: same array count, other sizes."""
    other = TIPSv2Backbone(**tiny_backbone_kwargs(vision_layer_scale=True, text_intermediate_dim=96))
    other.save_weights(str(path / "model.weights.h5"))


def nan_in_safetensors(path):
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(path / "model.safetensors"))
    key = sorted(k for k in arrays if k.endswith("norm1.weight"))[0]
    arrays[key][3] = np.nan
    save_file(arrays, str(path / "model.safetensors"), metadata={"format": "pt"})


def inf_in_npz(path):
    arrays = dict(np.load(path / "m_text.npz"))
    arrays["ln_final.weight"][0] = np.inf
    np.savez(path / "m_text.npz", **arrays)


def sharded_with_a_bad_index(path):
    os.rename(path / "model.safetensors", path / "model-00001-of-00001.safetensors")
    (path / "model.safetensors.index.json").write_text('{"weight_map": ')


# --- Loading -------------------------------------------------------------------


def load_backbone(path):
    return keras_hub.models.Backbone.from_preset(str(path))


def load_tokenizer(path):
    return keras_hub.tokenizers.Tokenizer.from_preset(str(path))


def load_image_converter(path):
    return keras_hub.layers.ImageConverter.from_preset(str(path))


def convert_npz(path):
    """The converter CLI on the pair; its one-line error is raised here."""
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = convert_main(
            ["--vision", str(path / "m_vision.npz"), "--text", str(path / "m_text.npz"),
             "--num-heads", "4", "--output", str(path / "out")]
        )  # fmt: skip
    if code:
        raise SystemExit(stderr.getvalue())
    return path / "out"


def convert_hf(path):
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = convert_main(["--hf", str(path), "--tokenizer", str(path / "tok.model"), "--output", str(path / "out")])
    if code:
        raise SystemExit(stderr.getvalue())
    return path / "out"


# (id, source, damage, load, error type, words the message must hold)
CASES = [
    # KerasHub preset: config.json
    ("config-invalid-json", "keras", write("config.json", b"{not json"), load_backbone, ValueError, ["config.json", "not valid JSON"]),
    ("config-empty", "keras", write("config.json", b""), load_backbone, ValueError, ["config.json"]),
    ("config-truncated", "keras", truncate("config.json"), load_backbone, ValueError, ["config.json"]),
    ("config-missing", "keras", remove("config.json"), load_backbone, ValueError, ["config.json"]),
    ("layers-float", "keras", edit_json("config.json", vision_num_layers=4.0), load_backbone, ValueError, ["config.json", "vision_num_layers", "4.0"]),
    ("width-string", "keras", edit_json("config.json", vision_hidden_dim="128"), load_backbone, ValueError, ["config.json", "vision_hidden_dim", "'128'"]),
    ("heads-zero", "keras", edit_json("config.json", vision_num_heads=0), load_backbone, ValueError, ["config.json", "vision_num_heads"]),
    ("heads-not-dividing", "keras", edit_json("config.json", text_num_heads=5), load_backbone, ValueError, ["config.json", "text_hidden_dim", "text_num_heads"]),
    ("activation-unknown", "keras", edit_json("config.json", vision_mlp_activation="relu"), load_backbone, ValueError, ["config.json", "vision_mlp_activation", "relu"]),
    ("grid-one-number", "keras", edit_json("config.json", vision_position_grid=[4]), load_backbone, ValueError, ["config.json", "vision_position_grid"]),
    ("layer-scale-string", "keras", edit_json("config.json", vision_layer_scale="yes"), load_backbone, ValueError, ["config.json", "vision_layer_scale"]),
    ("image-shape-4-channels", "keras", edit_json("config.json", image_shape=[28, 28, 4]), load_backbone, ValueError, ["config.json", "image_shape"]),
    ("vocabulary-null", "keras", edit_json("config.json", text_vocabulary_size=None), load_backbone, ValueError, ["config.json", "text_vocabulary_size"]),
    ("epsilon-negative", "keras", edit_json("config.json", text_layer_norm_epsilon=-1e-6), load_backbone, ValueError, ["config.json", "text_layer_norm_epsilon"]),
    ("field-missing", "keras", edit_json("config.json", text_num_layers=DELETE), load_backbone, ValueError, ["config.json", "text_num_layers"]),
    ("class-unknown", "keras", lambda p: (p / "config.json").write_text((p / "config.json").read_text().replace("keras_tipsv2>TIPSv2Backbone", "keras_tipsv2>Nope")), load_backbone, ValueError, ["config.json", "keras_tipsv2>Nope"]),
    # A config that lost vision_layer_scale: the gammas would be skipped.
    ("layer-scale-missing", "keras", edit_json("config.json", vision_layer_scale=DELETE), load_backbone, ValueError, ["model.weights.h5", "vision_layer_scale", "ls1"]),
    # KerasHub preset: weights
    ("weights-missing", "keras", remove("model.weights.h5"), load_backbone, FileNotFoundError, ["model.weights.h5"]),
    ("weights-truncated", "keras", truncate("model.weights.h5"), load_backbone, ValueError, ["model.weights.h5"]),
    ("weights-empty", "keras", write("model.weights.h5", b""), load_backbone, ValueError, ["model.weights.h5"]),
    ("weights-garbage", "keras", write("model.weights.h5", b"\x89HDF garbage" * 64), load_backbone, ValueError, ["model.weights.h5"]),
    ("weights-of-another-model", "keras", other_weights, load_backbone, ValueError, ["model.weights.h5", "values"]),
    # KerasHub preset: tokenizer and image converter
    ("tokenizer-json-invalid", "keras", write("tokenizer.json", b'{"module": '), load_tokenizer, ValueError, ["tokenizer.json"]),
    ("vocabulary-garbage", "keras", write("assets/tokenizer/vocabulary.spm", b"garbage" * 20), load_tokenizer, ValueError, ["assets/tokenizer", "vocabulary.spm"]),
    ("vocabulary-missing", "keras", remove("assets/tokenizer/vocabulary.spm"), load_tokenizer, FileNotFoundError, ["vocabulary.spm"]),
    ("converter-json-invalid", "keras", truncate("image_converter.json"), load_image_converter, ValueError, ["image_converter.json"]),
    ("converter-json-missing", "keras", remove("image_converter.json"), load_image_converter, FileNotFoundError, ["image_converter.json"]),
    # transformers checkpoint
    ("hf-config-invalid-json", "hf", truncate("config.json"), load_backbone, ValueError, ["config.json"]),
    ("hf-activation-unknown", "hf", edit_json("config.json", vision_config={"hidden_act": "relu"}), load_backbone, CheckpointError, ["config.json", "relu"]),
    ("safetensors-truncated", "hf", truncate("model.safetensors"), load_backbone, CheckpointError, ["model.safetensors"]),
    ("safetensors-garbage", "hf", write("model.safetensors", b"\x00" * 300), load_backbone, CheckpointError, ["model.safetensors"]),
    ("safetensors-missing", "hf", remove("model.safetensors"), load_backbone, FileNotFoundError, ["No model.safetensors"]),
    ("safetensors-index-invalid", "hf", sharded_with_a_bad_index, load_backbone, ValueError, ["model.safetensors.index.json"]),
    ("safetensors-nan", "hf", nan_in_safetensors, load_backbone, CheckpointError, ["norm1.weight", "NaN"]),
    ("hf-tokenizer-garbage", "hf", write("tok.model", b"garbage" * 20), convert_hf, SystemExit, ["tok.model"]),
    # official npz pair, through the converter CLI
    ("npz-inf", "npz", inf_in_npz, convert_npz, SystemExit, ["m_text.npz", "ln_final.weight", "infinite"]),
    ("npz-truncated", "npz", truncate("m_vision.npz"), convert_npz, SystemExit, ["m_vision.npz"]),
    ("npz-missing", "npz", remove("m_text.npz"), convert_npz, SystemExit, ["m_text.npz"]),
    ("npz-garbage", "npz", write("m_text.npz", b"PK\x03\x04 garbage"), convert_npz, SystemExit, ["m_text.npz"]),
]


@pytest.mark.parametrize(
    "source, damage, load, error, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_malformed_file_gives_one_clear_error(templates, tmp_path, source, damage, load, error, words):
    path = tmp_path / "preset"
    shutil.copytree(templates / source, path)
    damage(path)
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    # One error, not a traceback's worth: a line or two of text.
    assert len(message) < 1200, message


def test_the_table_covers_at_least_25_cases():
    assert len(CASES) >= 25


def test_the_undamaged_sources_load(templates, tmp_path):
    assert isinstance(load_backbone(templates / "keras"), TIPSv2Backbone)
    assert isinstance(load_tokenizer(templates / "keras"), TIPSv2Tokenizer)
    assert isinstance(load_backbone(templates / "hf"), TIPSv2Backbone)
    shutil.copytree(templates / "npz", tmp_path / "npz")
    assert (convert_npz(tmp_path / "npz") / "model.weights.h5").exists()


def test_a_weights_file_with_an_optimizer_group_still_loads(templates, tmp_path):
    # Old dense-task presets saved Adam's state beside the weights: training
    # state, not weights the model lacks.
    path = tmp_path / "preset"
    shutil.copytree(templates / "keras", path)
    with h5py.File(path / "model.weights.h5", "a") as f:
        f.create_dataset("optimizer/vars/0", data=np.zeros(3))
    assert isinstance(load_backbone(path), TIPSv2Backbone)
