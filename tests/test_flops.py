"""flops.py against XLA's own count of the compiled loss + gradient.

How XLA is read: `jax.jit(grad).lower(...).compile().cost_analysis()["flops"]` (CPU). XLA's
cost analysis counts a while loop's body ONCE, whatever its trip count (checked below), and
both `lax.scan`s here are while loops: over layers and over time (the selective scan's "ref"
implementation). So:
  * models have ONE layer, so the layer loop runs exactly once (flops.py is linear in layers);
  * for Caduceus, the time loop's body is measured on its own as S = 2*X(L) - X(2L), where
    X(L) is XLA's count of the scan's loss + gradient at length L (the part outside the loop
    grows linearly with L, the body does not), and added (L - 1) more times: honest
    multiplication, not unrolling (an unrolled scan makes XLA count slicing work that grows
    as L^2, which is not the work the loop does).
Transformers need no correction (no loops besides the one layer). The loss is a plain mean
cross-entropy; the optimizer update is per step, not per token, and left out of both sides.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from nanodna.models import ModelConfig, build_model, count_params
from nanodna.models.flops import (
    flops_per_token,
    non_embedding_params,
    six_n_flops_per_token,
)
from nanodna.ops.scan import selective_scan

B = 2  # windows per batch
TOL = 0.15


def _xla_flops(fn, *args) -> float:
    return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


def _loss_grad_flops(cfg: ModelConfig, L: int) -> float:
    model = build_model(cfg, jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    tokens_BL = jax.random.randint(jax.random.key(1), (B, L), 3, 7)

    def loss(p):
        logits_BLV = eqx.combine(p, static)(tokens_BL)
        logp_BLV = jax.nn.log_softmax(logits_BLV)
        return -jnp.mean(jnp.take_along_axis(logp_BLV, tokens_BL[..., None], -1))

    return _xla_flops(jax.grad(loss), params)


def _scan_step_flops(cfg: ModelConfig, batch: int, L: int) -> float:
    """XLA's count of ONE time step of one selective scan, forward + backward (see module doc)."""
    E, N = cfg.d_inner, cfg.d_state

    def count(length):
        k = jax.random.split(jax.random.key(2), 4)
        u, dt = (jax.random.normal(kk, (batch, length, E)) for kk in k[:2])
        Bm, C = (jax.random.normal(kk, (batch, length, N)) for kk in k[2:])
        A = -jnp.ones((E, N))

        def f(u, dt, Bm, C):
            y = selective_scan(u, dt, A, Bm, C, D=jnp.ones(E), z=u, delta_bias=jnp.zeros(E),
                               delta_softplus=True, impl="ref")
            return jnp.sum(y * y)

        return _xla_flops(jax.grad(f, argnums=(0, 1, 2, 3)), u, dt, Bm, C)

    return 2 * count(L) - count(2 * L)


def test_while_loop_body_is_counted_once():
    """The premise of the correction: XLA does not multiply a loop body by its trip count."""
    x = jnp.ones((32, 32))
    one = _xla_flops(lambda x: x @ x, x)
    ten = _xla_flops(lambda x: jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=10)[0], x)
    assert ten == pytest.approx(one, rel=0.01)


@pytest.mark.parametrize(
    ("d_model", "rcps"), [(64, True), (128, True), (64, False)], ids=["PS-64", "PS-128", "Ph-64"]
)
def test_caduceus_flops_match_xla(d_model, rcps):
    L = 8
    cfg = ModelConfig(arch="caduceus", d_model=d_model, n_layers=1, rcps=rcps, scan_impl="ref")
    # One scan call per direction; RCPS folds both strands into its batch.
    step = _scan_step_flops(cfg, (2 if rcps else 1) * B, L)
    assert step > 0
    xla = _loss_grad_flops(cfg, L) + 2 * (L - 1) * step
    ours = flops_per_token(cfg, L) * B * L
    print(f"{cfg.arch} d_model={d_model}: ours / XLA = {ours / xla:.3f}")
    assert ours == pytest.approx(xla, rel=TOL), (ours / xla, ours, xla)


@pytest.mark.parametrize(
    ("d_model", "causal"), [(64, False), (128, False), (128, True)],
    ids=["mlm-64", "mlm-128", "clm-128"],
)
def test_transformer_flops_match_xla(d_model, causal):
    L = 128  # attention is a visible share: 4 L D against ~24 D^2
    cfg = ModelConfig(arch="transformer", d_model=d_model, n_layers=1, n_heads=4, causal=causal)
    ours = flops_per_token(cfg, L) * B * L
    xla = _loss_grad_flops(cfg, L)
    print(f"{cfg.arch} d_model={d_model}: ours / XLA = {ours / xla:.3f}")
    assert ours == pytest.approx(xla, rel=TOL), (ours / xla, ours, xla)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(arch="caduceus", d_model=64, n_layers=2),
        ModelConfig(arch="caduceus", d_model=64, n_layers=2, tie_in_out_proj=False),
        ModelConfig(arch="transformer", d_model=64, n_layers=2),
    ],
    ids=["caduceus", "caduceus-untied", "transformer"],
)
def test_non_embedding_params_match_the_built_model(cfg):
    total = count_params(build_model(cfg, jax.random.key(0)))
    embedding = cfg.vocab_size * cfg.d_model * (2 if cfg.arch == "transformer" else 1)
    assert non_embedding_params(cfg) == total - embedding
    assert six_n_flops_per_token(cfg) == 6 * (total - embedding)


def test_rcps_doubles_the_work_but_not_6n():
    cfg = ModelConfig(arch="caduceus", d_model=64, n_layers=2)
    ph = dataclasses.replace(cfg, rcps=False)
    assert flops_per_token(cfg, 512) == pytest.approx(2 * flops_per_token(ph, 512))
    assert six_n_flops_per_token(cfg) == six_n_flops_per_token(ph)
