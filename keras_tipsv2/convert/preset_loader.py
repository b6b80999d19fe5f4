"""TIPS / TIPSv2 presets through KerasHub's own `from_preset`.

KerasHub picks a loader for a preset in `preset_utils.get_preset_loader`
from its config.json: "registered_name" (a KerasHub preset), "model_type"
(a `transformers` checkpoint, for a fixed list of model types) or
"architecture" (timm). It has no way to add a model type or a scheme, so
`register()` wraps that function, in every KerasHub module that calls it,
with one that first asks `tipsv2_loader(preset)`:

- a `transformers` checkpoint with model_type "tipsv2" (a local directory or
  `hf://owner/name`) -> `TransformersCheckpointLoader`, converted as it loads;
- `tips-npz://PREFIX`, the official npz pair `PREFIX_vision.npz` /
  `PREFIX_text.npz` (local paths or URLs) -> `OfficialNpzLoader`;
- a KerasHub preset of a `keras_tipsv2` class -> `StrictPresetLoader`, which
  loads as KerasHub does but refuses what KerasHub lets pass (weights the
  model has no place for, ill-typed config fields, unreadable files) with an
  error naming the file;
- anything else -> None, and KerasHub's own loader takes it.

So after `import keras_tipsv2`, `keras_hub.models.Backbone.from_preset`,
`keras_hub.tokenizers.Tokenizer.from_preset`,
`keras_hub.layers.ImageConverter.from_preset` and every `TIPSv2*` class's
`from_preset` load all of these, and the published short names, which are
`hf://` or `tips-npz://` handles. When the hub cannot be reached and the
files are not cached, loading stops at once (not after the hub client's
retries) and says how to convert local files instead.
"""

import contextlib
import json
import os
import socket
import sys
import threading
from urllib.parse import urlparse

import keras
import keras_hub  # noqa: F401  (loads every module that calls get_preset_loader)
from keras_hub.src.utils import preset_utils
from keras_hub.src.utils.preset_utils import (
    CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    SHARDED_MODEL_WEIGHTS_CONFIG_FILE,
    TASK_CONFIG_FILE,
    TASK_WEIGHTS_FILE,
    KerasPresetLoader,
    PresetLoader,
)

from keras_tipsv2.convert import weights_file
from keras_tipsv2.convert.loading import load_checkpoint
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone

NPZ_SCHEME = "tips-npz://"
HF_SCHEME = "hf://"
TOKENIZER_FILE = "tokenizer.model"
OFFICIAL_TOKENIZER_URL = "https://storage.googleapis.com/tips_data/v1_0/checkpoints/tokenizer.model"
# Seconds to wait for a connection to a hub before calling it unreachable.
REACH_TIMEOUT = 1.5

CONVERT_HINT = (
    "To use local files instead, convert them once:\n"
    "  python -m keras_tipsv2.convert --hf HF_CHECKPOINT_DIR --output DIR\n"
    "  python -m keras_tipsv2.convert --vision V.npz --text T.npz "
    "--tokenizer tokenizer.model --output DIR\n"
    "then load DIR with from_preset(DIR)."
)


# --- Registration -----------------------------------------------------------


def register():
    """Puts `tipsv2_loader` in front of KerasHub's `get_preset_loader`.

    KerasHub's modules import the function by name, so it is replaced in
    each loaded `keras_hub` module that holds it. Idempotent.

    Returns:
        The names of the modules whose `get_preset_loader` was replaced.
    """
    original = getattr(preset_utils.get_preset_loader, "__wrapped__", preset_utils.get_preset_loader)

    def get_preset_loader(preset):
        loader = tipsv2_loader(preset)
        return loader if loader is not None else original(preset)

    get_preset_loader.__wrapped__ = original
    replaced = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("keras_hub") or module is None:
            continue
        current = getattr(module, "get_preset_loader", None)
        if current is original or getattr(current, "__wrapped__", None) is original:
            module.get_preset_loader = get_preset_loader
            replaced.append(name)
    return replaced


def tipsv2_loader(preset):
    """The loader for a TIPS preset, or None for one KerasHub loads itself."""
    if not isinstance(preset, str):
        return None
    handle = preset
    if preset in preset_utils.BUILTIN_PRESETS:
        handle = preset_utils.BUILTIN_PRESETS[preset]["kaggle_handle"]
    if handle.startswith(NPZ_SCHEME):
        return OfficialNpzLoader(preset, handle[len(NPZ_SCHEME):])
    if handle.startswith(HF_SCHEME):
        config_path = fetch_hf(handle, CONFIG_FILE, preset)
    elif os.path.isdir(handle) and os.path.exists(os.path.join(handle, CONFIG_FILE)):
        config_path = os.path.join(handle, CONFIG_FILE)
    else:
        return None
    config = read_json(config_path)
    if not isinstance(config, dict):
        return None
    if config.get("model_type") == "tipsv2":
        return TransformersCheckpointLoader(preset, handle, config)
    if str(config.get("registered_name", "")).startswith("keras_tipsv2>"):
        return StrictPresetLoader(preset, config)
    return None


# --- Files ------------------------------------------------------------------


def read_json(path):
    """A JSON file's content; a missing or malformed file is named."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"Missing file {path}.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is damaged or incomplete.") from e


def reachable(url):
    """Whether a TCP connection to the host of `url` opens within
    `REACH_TIMEOUT` seconds. Runs in a thread so that a stalled DNS lookup
    cannot hold the caller longer either."""
    parts = urlparse(url)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    opened = []

    def connect():
        try:
            socket.create_connection((parts.hostname, port), timeout=REACH_TIMEOUT).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(REACH_TIMEOUT)
    return bool(opened)


def _unreachable(what, preset, where):
    return ConnectionError(
        f"Could not fetch {what} for preset {preset!r}: {where} cannot be reached "
        f"from this machine (no network access?) and the file is not cached.\n{CONVERT_HINT}"
    )


def fetch_hf(handle, filename, preset):
    """Local path of `filename` of an `hf://` repository: from the cache,
    else downloaded; fails at once when the hub cannot be reached."""
    import huggingface_hub

    repo = handle[len(HF_SCHEME):]
    try:
        return huggingface_hub.hf_hub_download(repo, filename, local_files_only=True)
    except huggingface_hub.errors.LocalEntryNotFoundError:
        pass  # not cached yet
    except Exception as e:  # e.g. a malformed repository name
        raise ValueError(f"Invalid Hugging Face handle {handle!r}: {e}") from e
    endpoint = huggingface_hub.constants.ENDPOINT
    if huggingface_hub.constants.HF_HUB_OFFLINE or not reachable(endpoint):
        raise _unreachable(filename, preset, urlparse(endpoint).hostname)
    return preset_utils.get_file(handle, filename)


def fetch_url(url, preset):
    """Local path of a file given by path or URL, cached under KERAS_HOME."""
    if "://" not in url:
        if not os.path.exists(url):
            raise FileNotFoundError(f"Missing file {url} (preset {preset!r}).")
        return url
    cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "tipsv2")
    name = os.path.basename(urlparse(url).path)
    if os.path.exists(os.path.join(cache, name)):
        return os.path.join(cache, name)
    if not reachable(url):
        raise _unreachable(name, preset, urlparse(url).hostname)
    return keras.utils.get_file(name, origin=url, cache_dir=os.path.dirname(cache), cache_subdir="tipsv2")


@contextlib.contextmanager
def naming(path):
    """Re-raises an error as a ValueError with `path` in front (a missing
    file or an unreachable hub keeps its own type and message)."""
    try:
        yield
    except (FileNotFoundError, ConnectionError):
        raise
    except Exception as e:  # e.g. SentencePiece's InternalError names no file
        if str(path) in str(e) and isinstance(e, ValueError):
            raise
        # Keras wraps a constructor's error in a page about from_config and
        # the whole config; the constructor's own words are the message.
        message = str(e).rsplit("Exception encountered: ", 1)[-1]
        raise ValueError(f"{path}: {message}") from e


# --- Checkpoints converted as they load ----------------------------------


class CheckpointLoader(PresetLoader):
    """A TIPS checkpoint that is not a KerasHub preset, converted on load.

    Subclasses give `read_checkpoint()`, `tokenizer_file()`, `image_size()`
    and `sequence_length()`; everything else is shared. Weights are checked
    key by key and refused if not finite (`load_checkpoint`).
    """

    def __init__(self, preset, config):
        super().__init__(preset, config)
        self._checkpoint = None

    def checkpoint(self):
        if self._checkpoint is None:
            self._checkpoint = self.read_checkpoint()
        return self._checkpoint

    def check_backbone_class(self):
        return TIPSv2Backbone

    def load_backbone(self, cls, load_weights, **kwargs):
        checkpoint = self.checkpoint()
        backbone = cls(**{**checkpoint.config, **kwargs})
        if load_weights:
            load_checkpoint(backbone, checkpoint)
        return backbone

    def load_tokenizer(self, cls, config_file=None, **kwargs):
        kwargs.setdefault("sequence_length", self.sequence_length())
        path = self.tokenizer_file()
        with naming(path):
            return cls(proto=path, **kwargs)

    def load_image_converter(self, cls, **kwargs):
        size = self.image_size()
        kwargs.setdefault("image_size", (size, size))
        return cls(**kwargs)

    def missing_tokenizer(self, looked_in):
        return FileNotFoundError(
            f"Preset {self.preset!r} has no {TOKENIZER_FILE} (looked in "
            f"{', '.join(looked_in)}). Put the SentencePiece model there, pass "
            f"`TIPSv2Tokenizer(proto=...)` yourself, or convert with "
            f"`python -m keras_tipsv2.convert ... --tokenizer {TOKENIZER_FILE}` "
            f"(the official file: {OFFICIAL_TOKENIZER_URL})."
        )


class TransformersCheckpointLoader(CheckpointLoader):
    """A `transformers` TIPSv2 checkpoint: config.json + model.safetensors."""

    def __init__(self, preset, handle, config):
        super().__init__(preset, config)
        self.handle = handle

    def _file(self, name):
        if self.handle.startswith(HF_SCHEME):
            return fetch_hf(self.handle, name, self.preset)
        path = os.path.join(self.handle, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"`{name}` doesn't exist in preset directory `{self.handle}`.")
        return path

    def read_checkpoint(self):
        from keras_tipsv2.convert.hf import read_hf, open_safetensors

        try:
            weights = self._file("model.safetensors")
        except FileNotFoundError:
            try:
                index = self._file("model.safetensors.index.json")
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"No model.safetensors (nor a sharded model.safetensors.index.json) "
                    f"in {self.handle}: the checkpoint has no weights."
                ) from None
            for shard in sorted(set(read_json(index).get("weight_map", {}).values())):
                weights = self._file(shard)
        directory = os.path.dirname(weights)
        return read_hf(self.config, open_safetensors(directory), source=self.handle)

    def tokenizer_file(self):
        try:
            return self._file(TOKENIZER_FILE)
        except FileNotFoundError:
            raise self.missing_tokenizer([self.handle]) from None

    def image_size(self):
        return int((self.config.get("vision_config") or {}).get("image_size", 448))

    def sequence_length(self):
        return int((self.config.get("text_config") or {}).get("max_position_embeddings", 64))


class OfficialNpzLoader(CheckpointLoader):
    """The official npz pair `PREFIX_vision.npz` / `PREFIX_text.npz`.

    The tokenizer is `tokenizer.model` beside the pair or one folder up
    (where the official release keeps it).
    """

    def __init__(self, preset, prefix):
        super().__init__(preset, {})
        self.prefix = prefix

    def read_checkpoint(self):
        from keras_tipsv2.convert.official import load_npz, read_official

        vision = load_npz(fetch_url(f"{self.prefix}_vision.npz", self.preset))
        text = load_npz(fetch_url(f"{self.prefix}_text.npz", self.preset))
        source = f"{os.path.basename(self.prefix)}_vision.npz / _text.npz"
        return read_official(vision, text, source=source)

    def tokenizer_file(self):
        here = self.prefix.rsplit("/", 1)[0] if "/" in self.prefix else "."
        places = [here, here.rsplit("/", 1)[0] if "/" in here else ".."]
        for place in places:
            try:
                return fetch_url(f"{place}/{TOKENIZER_FILE}", self.preset)
            except FileNotFoundError:
                continue
            except ConnectionError:
                raise
            except Exception:  # a URL that does not exist
                continue
        raise self.missing_tokenizer(places)

    def image_size(self):
        config = self.checkpoint().config
        return config["vision_position_grid"][0] * config.get("vision_patch_size", 14)

    def sequence_length(self):
        return self.checkpoint().config.get("text_max_sequence_length", 64)


# --- KerasHub presets, loaded strictly --------------------------------------


class StrictPresetLoader(KerasPresetLoader):
    """KerasHub's loader for presets of `keras_tipsv2` classes, made strict.

    Every JSON file is parsed with an error naming it; a config that does
    not build (`check_backbone_config`) is reported with the file's name;
    the weights file must exist, be readable and hold exactly the model's
    weights (`weights_file.check_weights_file`): KerasHub would skip saved
    arrays the model has no place for without a word.
    """

    def _path(self, name):
        return preset_utils.get_file(self.preset, name)

    def _json(self, name):
        return read_json(self._path(name))

    def check_backbone_class(self):
        with naming(self._path(CONFIG_FILE)):
            return preset_utils.check_config_class(self.config)

    def load_backbone(self, cls, load_weights, **kwargs):
        config = self.config.copy()
        backbone_kwargs, kwargs = self.get_backbone_kwargs(**kwargs)
        config["config"] = {**config["config"], **backbone_kwargs}
        with naming(self._path(CONFIG_FILE)):
            backbone = self._load_serialized_object(config, **kwargs)
        if load_weights:
            preset_utils.jax_memory_cleanup(backbone)
            self._load_backbone_weights(backbone)
        return backbone

    def _load_backbone_weights(self, backbone):
        if preset_utils.check_file_exists(self.preset, MODEL_WEIGHTS_FILE):
            path = self._path(MODEL_WEIGHTS_FILE)
            weights_file.check_weights_file(path, backbone.weights, "the backbone built from config.json")
            with naming(path):
                backbone.load_weights(path)
        elif preset_utils.check_file_exists(self.preset, SHARDED_MODEL_WEIGHTS_CONFIG_FILE):
            super()._load_backbone_weights(backbone)
        else:
            raise FileNotFoundError(
                f"Preset {self.preset!r} has no {MODEL_WEIGHTS_FILE} (nor sharded "
                f"weights, {SHARDED_MODEL_WEIGHTS_CONFIG_FILE}): the preset is incomplete. "
                "Pass load_weights=False for random weights."
            )

    def load_tokenizer(self, cls, config_file=preset_utils.TOKENIZER_CONFIG_FILE, **kwargs):
        config = self._json(config_file)
        with naming(self._path(config_file)):
            tokenizer = self._load_serialized_object(config, **kwargs)
        if hasattr(tokenizer, "load_preset_assets"):
            assets = os.path.join(preset_utils.ASSET_DIR, config_file.split(".")[0])
            where = os.path.join(os.path.dirname(self._path(config_file)), assets)
            try:
                tokenizer.load_preset_assets(self.preset)
            except FileNotFoundError:
                raise
            except Exception as e:  # SentencePiece's errors name no file
                raise ValueError(
                    f"{where}: {tokenizer.file_assets} could not be loaded as the "
                    f"tokenizer's model (damaged or not a SentencePiece file?): {e}"
                ) from e
        return tokenizer

    def load_image_converter(self, cls, **kwargs):
        name = preset_utils.IMAGE_CONVERTER_CONFIG_FILE
        config = self._json(name)
        with naming(self._path(name)):
            return self._load_serialized_object(config, **kwargs)

    def load_preprocessor(self, cls, config_file=preset_utils.PREPROCESSOR_CONFIG_FILE, **kwargs):
        if preset_utils.check_file_exists(self.preset, config_file):
            self._json(config_file)  # a damaged file is named, not half-read
        return super().load_preprocessor(cls, config_file, **kwargs)

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        if not preset_utils.check_file_exists(self.preset, TASK_CONFIG_FILE):
            return super().load_task(cls, load_weights, load_task_weights, **kwargs)
        self._json(TASK_CONFIG_FILE)
        with naming(self._path(TASK_CONFIG_FILE)):
            task = super().load_task(cls, False, False, **kwargs)
        if load_weights:
            if load_task_weights and preset_utils.check_file_exists(self.preset, TASK_WEIGHTS_FILE):
                path = self._path(TASK_WEIGHTS_FILE)
                backbone_ids = {id(w) for w in task.backbone.weights}
                head = [w for w in task.weights if id(w) not in backbone_ids]
                weights_file.check_weights_file(path, head, "the task's head built from task.json")
                with naming(path):
                    task.load_task_weights(path)
            self._load_backbone_weights(task.backbone)
        return task
