"""AdamW with global-norm clipping and a weight-decay mask, without the learning rate.

The transformation returns AdamW's step direction (Adam update + weight_decay * param); the
train step multiplies it by -lr, with lr computed on the host each step (see schedules.py).
That is exactly optax.adamw with a schedule, but the schedule can change without recompiling.

Weight decay pulls weights towards zero, which makes sense for matrices (it limits their norm)
but not for gains and offsets: a norm's scale decayed to 0 silences its layer, a bias has no
norm to limit. So decay applies only to arrays with 2+ dimensions whose name is not a norm, a
bias, or one of Mamba's per-channel SSM parameters (A_log, D), which mamba-ssm also exempts.
"""

from __future__ import annotations

import jax
import optax

from nanodna.config import OptimConfig

# Attribute names (last element of a parameter's path) never decayed, whatever their rank.
NO_DECAY_NAMES = ("bias", "A_log", "D", "scale", "gamma", "beta")


def _path_names(path) -> list[str]:
    names = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return names


def decay_mask(params):
    """Pytree of bools, True where weight decay applies (see module docstring)."""

    def decays(path, x) -> bool:
        names = _path_names(path)
        is_norm = any("norm" in n.lower() for n in names)
        return x.ndim >= 2 and not is_norm and (not names or names[-1] not in NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Clip by global norm, Adam scaling, then decoupled weight decay on the masked params."""
    parts = [] if cfg.grad_clip is None else [optax.clip_by_global_norm(cfg.grad_clip)]
    parts += [
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
    ]
    return optax.chain(*parts)
