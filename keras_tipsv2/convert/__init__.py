"""Checkpoint conversion: official PyTorch / Scenic npz and Hugging Face -> KerasHub presets."""

from keras_tipsv2.convert.checkpoint import Checkpoint, CheckpointError
from keras_tipsv2.convert.hf import backbone_from_hf, read_hf, read_hf_dir
from keras_tipsv2.convert.loading import (
    backbone_from_checkpoint,
    backbone_variable_map,
    load_checkpoint,
)
from keras_tipsv2.convert.official import detect_layout, load_npz, read_official
