"""Which annotated tiles train the segmenter S and which give the validation loss that steers the architecture A.

GenSeg's stage III needs real labelled pairs that S never trains on; otherwise ``L_val`` measures memorisation and A is
tuned to it. The benchmark's validation and test tiles (held-out slides) must stay out too, so the validation pairs
come from the annotated *training* tiles, split by tile (crops of one tile never sit on both sides).
"""

from __future__ import annotations

import numpy as np


def hold_out_tiles(n_tiles: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, validation)`` of ``n_tiles`` annotated tiles; at least one tile on each side.

    Raises:
        ValueError: fewer than 2 tiles (nothing to hold apart), or ``share`` outside (0, 1).
    """
    if not 0 < share < 1:
        raise ValueError(f"val_share: expected a share in (0, 1), received {share}")
    if n_tiles < 2:
        raise ValueError(
            f"GenSeg needs at least 2 annotated training tiles (one to train the segmenter, one for the validation "
            f"loss that steers the architecture); found {n_tiles}. Annotate more tiles of the training slides"
        )
    n_val = min(max(1, round(share * n_tiles)), n_tiles - 1)
    order = np.random.default_rng(seed).permutation(n_tiles)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
