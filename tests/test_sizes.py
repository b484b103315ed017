"""Named sizes: PlantCAD1 parameter counts against the published figures and a closed form
written out from the architecture; FLOPs per token against the 6N + attention formula."""

import dataclasses
import math

import jax
import pytest

from nanodna.models import build_model, count_params, flops_per_token, sizes

PUBLISHED = {"plantcad_l20": 20e6, "plantcad_l24": 40e6, "plantcad_l28": 112e6, "plantcad_l32": 225e6}


def abstract_count(cfg):
    """Parameter count without allocating: initialise under eval_shape."""
    return count_params(jax.eval_shape(lambda: build_model(cfg, jax.random.key(0))))


def caduceus_closed_form(D, n_layers, V=8, N=16, K=4, expand=2):
    """Caduceus-PS with tied BiMamba projections, written out term by term."""
    E, R = expand * D, math.ceil(D / 16)
    shared = D * 2 * E + E * D  # in_proj (x and z), out_proj; no biases
    per_direction = (
        E * K + E  # depthwise conv weight + bias
        + E * (R + 2 * N)  # x_proj -> dt, B, C
        + R * E + E  # dt_proj weight + bias
        + E * N  # A_log
        + E  # D skip
    )
    per_layer = shared + 2 * per_direction + D  # + the block's RMSNorm
    return n_layers * per_layer + V * D + D  # embedding (tied to the head) + final RMSNorm


def test_l20_matches_published_and_closed_form():
    n = abstract_count(sizes.get("plantcad_l20"))
    assert n == caduceus_closed_form(384, 20)
    assert abs(n - 20e6) / 20e6 < 0.06  # "about 20M"


@pytest.mark.parametrize("name", ["plantcad_l24", "plantcad_l28", "plantcad_l32"])
def test_larger_plantcad_sizes(name):
    cfg = sizes.get(name)
    n = abstract_count(cfg)
    assert n == caduceus_closed_form(cfg.d_model, cfg.n_layers)
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.1


def test_transformer_sizes_span_1m_to_600m():
    counts = {name: abstract_count(cfg) for name, cfg in sizes.SIZES.items() if cfg.arch == "transformer"}
    assert 0.8e6 < counts["transformer_1m"] < 1.3e6
    assert 90e6 < counts["transformer_100m"] < 110e6
    assert 550e6 < counts["transformer_600m_clm"] < 700e6
    marin = sizes.get("transformer_600m_clm")
    assert (marin.n_layers, marin.d_model, marin.n_heads, marin.causal) == (24, 1408, 22, True)


def test_transformer_flops_are_6n_plus_attention():
    cfg = sizes.get("transformer_10m")
    L = 512
    n_matmul = abstract_count(cfg) - cfg.vocab_size * cfg.d_model - (2 * cfg.n_layers + 1) * cfg.d_model
    assert flops_per_token(cfg, L) == pytest.approx(6 * n_matmul + 12 * cfg.n_layers * L * cfg.d_model)


def test_caduceus_flops_scale_with_strands_and_layers():
    cfg = sizes.get("plantcad_l20")
    f = flops_per_token(cfg, 512)
    assert f == pytest.approx(2 * flops_per_token(dataclasses.replace(cfg, rcps=False), 512))
    n = abstract_count(cfg)
    # Two strands over ~all parameters, 6 FLOPs each, plus the scan: 12N < f < 14N.
    assert 12 * n < f < 14 * n


def test_unknown_size_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model size"):
        sizes.get("plantcad_l99")
