"""AdamW's weight-decay mask: matrices decay; norms, biases, 1-D and SSM parameters do not."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nanodna.config import OptimConfig
from nanodna.training.optim import decay_mask, make_optimizer
from tests._fakes import build_tiny


def test_decay_mask_on_tiny_model():
    params = eqx.filter(build_tiny()(jax.random.key(0)), eqx.is_inexact_array)
    mask = decay_mask(params)
    assert mask.embed_VD is True and mask.mlp.weight is True and mask.head.weight is True
    assert mask.mlp.bias is False and mask.head.bias is False
    assert mask.norm.weight is False  # RMSNorm gain (1-D, and under a "norm" name)


def test_decay_mask_by_name_and_rank():
    params = {"layer": {"norm_out": {"w": jnp.ones((4, 4))}, "A_log": jnp.ones((4, 3)),
                        "D": jnp.ones((4,)), "in_proj": jnp.ones((4, 8)), "bias": jnp.ones((8, 2))}}
    m = decay_mask(params)["layer"]
    assert m == {"norm_out": {"w": False}, "A_log": False, "D": False, "in_proj": True,
                 "bias": False}


def test_weight_decay_only_touches_masked_params():
    # With zero gradients, the AdamW direction is exactly wd * param on decayed leaves (the
    # train step then moves by -lr times it).
    rng = np.random.default_rng()
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "norm": {"scale": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}
    opt = make_optimizer(OptimConfig(weight_decay=0.5))
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], 0.5 * params["w"], rtol=1e-6)
    np.testing.assert_array_equal(updates["norm"]["scale"], 0.0)


def test_same_as_optax_adamw_with_lr():
    rng = np.random.default_rng()
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    cfg = OptimConfig(weight_decay=0.1, grad_clip=None, b2=0.95)
    ours, _ = make_optimizer(cfg).update(grads, make_optimizer(cfg).init(params), params)
    ref_opt = optax.adamw(3e-3, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=0.1,
                          mask={"w": True, "b": False})
    ref, _ = ref_opt.update(grads, ref_opt.init(params), params)
    for k in params:
        np.testing.assert_allclose(-3e-3 * ours[k], ref[k], rtol=1e-5, atol=1e-9)


def test_gradient_clipping_caps_the_global_norm():
    # Adam with a large eps is no longer scale-invariant: the update grows with the gradient,
    # unless clipping brings every large gradient down to the same norm first.
    def first_update(grad_clip, scale):
        opt = make_optimizer(OptimConfig(weight_decay=0.0, grad_clip=grad_clip, eps=1.0))
        params = {"w": jnp.ones((2, 3))}
        g = {"w": scale * jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)), jnp.float32)}
        return opt.update(g, opt.init(params), params)[0]["w"]

    np.testing.assert_allclose(first_update(0.5, 10.0), first_update(0.5, 1000.0), rtol=1e-5)
    assert not np.allclose(first_update(None, 10.0), first_update(None, 1000.0), rtol=1e-3)
