import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def tiny_backbone_kwargs(**overrides):
    """A tiny TIPSv2 config that runs in milliseconds; tests build on it."""
    kwargs = dict(
        vision_patch_size=14,
        vision_hidden_dim=32,
        vision_num_layers=2,
        vision_num_heads=4,
        vision_intermediate_dim=64,
        vision_position_grid=(4, 4),
        text_vocabulary_size=64,
        text_hidden_dim=32,
        text_num_layers=2,
        text_num_heads=4,
        text_intermediate_dim=64,
        text_max_sequence_length=16,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def rng():
    return np.random.default_rng(0)
