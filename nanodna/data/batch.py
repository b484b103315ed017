"""The training batch: the typed contract between the data stream and the train step.

Glossary: B batch (windows), L window length in tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Float32, Int32


class Batch(NamedTuple):
    """One batch of windows, as numpy arrays on the host (the step puts them on devices).

    tokens_BL   model input ids (masked for MLM, the window for CLM), int32
    targets_BL  the id the loss asks for at each position, int32
    weights_BL  loss weight per position (0 where nothing is scored), float32
    """

    tokens_BL: Int32[np.ndarray, "B L"]
    targets_BL: Int32[np.ndarray, "B L"]
    weights_BL: Float32[np.ndarray, "B L"]
