"""A checkpoint seen through our own names, whatever file it came from.

Every reader (official PyTorch npz, official Scenic npz, Hugging Face) turns
its file into a `Checkpoint`: a mapping from our canonical names (listed by
`canonical_names`) to *lazy* arrays, each remembering the source key it came
from. Arrays are produced one at a time when they are assigned, so a g/14
conversion holds the model plus one tensor, not two copies of the file.
"""

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint key is missing, unexpected or of the wrong shape."""


class Checkpoint:
    """Lazy canonical-name -> (source key, array thunk) mapping.

    Args:
        source: a description of the file(s), used in error messages.
        config: backbone constructor arguments inferred from the file.
    """

    def __init__(self, source, config):
        self.source = source
        self.config = dict(config)
        self._entries = {}

    def add(self, name, source_key, thunk):
        self._entries[name] = (source_key, thunk)

    def names(self):
        return list(self._entries)

    def source_key(self, name):
        return self._entries[name][0]

    def array(self, name):
        return np.asarray(self._entries[name][1]())

    def __contains__(self, name):
        return name in self._entries


class KeyReader:
    """Reads arrays by source key and remembers which keys were used.

    `finish()` raises if the file holds keys nobody read, so a checkpoint of
    another model (or a renamed layout) fails loudly instead of loading half.
    """

    def __init__(self, arrays, source, ignored=()):
        self._arrays = arrays
        self._source = source
        self._used = set()
        self._ignored = set(ignored)

    def keys(self):
        return list(self._arrays.keys())

    def has(self, key):
        return key in self._arrays

    def shape(self, key):
        return tuple(self.get(key).shape)

    def get(self, key):
        if key not in self._arrays:
            raise CheckpointError(f"{self._source}: missing key '{key}'.")
        self._used.add(key)
        return np.asarray(self._arrays[key])

    def lazy(self, key, transform=lambda a: a):
        if key not in self._arrays:
            raise CheckpointError(f"{self._source}: missing key '{key}'.")
        self._used.add(key)
        return lambda: transform(np.asarray(self._arrays[key]))

    def finish(self):
        extra = sorted(set(self._arrays.keys()) - self._used - self._ignored)
        if extra:
            shown = ", ".join(
                f"'{k}' {tuple(np.shape(self._arrays[k]))}" for k in extra[:5]
            )
            more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
            raise CheckpointError(
                f"{self._source}: unexpected key(s) {shown}{more}; this does not "
                "look like a TIPS / TIPSv2 checkpoint of the detected layout."
            )


def block_count(keys, pattern):
    """Number of blocks i for which `pattern.format(i)` is a key."""
    n = 0
    while pattern.format(n) in keys:
        n += 1
    return n


# Head counts of the published variants, by width: the PyTorch layouts fuse
# q/k/v, so the number of heads cannot be read off the shapes.
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16, 1536: 24}


def heads_for_width(width, num_heads=None):
    if num_heads is not None:
        return int(num_heads)
    if width not in HEADS_BY_WIDTH:
        raise CheckpointError(
            f"Cannot infer the number of attention heads for width {width}, "
            f"which is not a published TIPS width {sorted(HEADS_BY_WIDTH)}; "
            "pass num_heads explicitly."
        )
    return HEADS_BY_WIDTH[width]
