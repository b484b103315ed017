"""nanodna.convert: Caduceus checkpoints in the HF layout, imported and exported exactly.

Parity: each fixture in tests/data/caduceus_official (written by the official PyTorch code,
see its PROVENANCE.md) imports into a nanodna model whose logits, on the fixture's rows and on
their reverse complements, match the official ones to relative 1e-5 in float32. The fused
fixtures also show that the fused path is a different function (without rcps_swap_strands the
logits are far off). Export writes back the official file tensor for tensor; import -> export
-> import is bitwise. Settings nanodna does not implement are refused with one line.
"""

import dataclasses
import json
import os
import shutil
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from nanodna import convert
from nanodna.models import ModelConfig, build_model, rcps, sizes
from nanodna.tokenizer import reverse_complement
from nanodna.checkpoint import load_model

DATA = os.path.join(os.path.dirname(__file__), "data", "caduceus_official")
with open(os.path.join(DATA, "index.json")) as _f:
    CASES = [c["name"] for c in json.load(_f)]
FUSED_PS = [c for c in CASES if c.startswith("ps_fused")]
REL_TOL = 1e-5


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: relative error on the scale of the reference logits."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def fixture(name):
    d = os.path.join(DATA, name)
    return (d, np.load(os.path.join(d, "input_ids.npy")).astype(np.int32),
            np.load(os.path.join(d, "logits.npy")), np.load(os.path.join(d, "logits_rc.npy")))


def random_model(cfg, seed=0):
    """A model of cfg's layout with random float32 parameters (no init code, no compiles)."""
    abstract = eqx.filter_eval_shape(build_model, cfg, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(abstract)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [jnp.asarray(rng.standard_normal(a.shape, np.float32))
                                        for a in leaves])


@eqx.filter_jit
def _logits(model, tokens_BL):
    return model(tokens_BL)


def both_strands(model, ids):
    """(logits(x), logits(rc(x))) from one call: one compile per model layout."""
    out = np.asarray(_logits(model, jnp.asarray(np.concatenate([ids, reverse_complement(ids)]))))
    return out[: len(ids)], out[len(ids):]


# --- parity with the official implementation ------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_imported_model_reproduces_official_logits_and_rc_behaviour(name):
    """Default scan path (ModelConfig.scan_impl="auto"; test_scan.py ties it to "ref").
    Caduceus-PS: logits(rc x) = rc_logits(logits(x)), in the official output and in ours,
    odd depth included. Caduceus-Ph is not equivariant: the official outputs break it, and
    ours match them on both strands anyway."""
    hf_dir, ids, want, want_rc = fixture(name)
    model, cfg = convert.from_hf(hf_dir)
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    assert cfg.rcps == hf["rcps"] and cfg.n_layers == hf["n_layer"]
    assert cfg.rcps_swap_strands == (hf["fused_add_norm"] and hf["rcps"])
    got, got_rc = both_strands(model, ids)
    assert got.dtype == np.float32
    assert rel_err(got, want) < REL_TOL, rel_err(got, want)
    assert rel_err(got_rc, want_rc) < REL_TOL, rel_err(got_rc, want_rc)
    official_gap = rel_err(rcps.rc_logits(jnp.asarray(want)), want_rc)
    our_gap = rel_err(rcps.rc_logits(jnp.asarray(got)), got_rc)
    if cfg.rcps:
        assert official_gap < REL_TOL and our_gap < REL_TOL
    else:
        assert official_gap > 1e-3 and our_gap > 1e-3


def test_fused_checkpoints_need_the_strand_swap():
    """Loading fused weights name for name into the unfused function is far off: the fixtures
    tell the two paths apart, so the parity test above does check the swap."""
    hf_dir, ids, want, _ = fixture("ps_fused_d32_l2")
    cfg = dataclasses.replace(convert.model_config_from_hf(convert.read_hf_config(hf_dir)),
                              rcps_swap_strands=False)
    tensors = convert.read_hf_tensors(hf_dir)
    # Same tensors under the unfused names (RCPSAddNormWrapper adds ".submodule").
    renamed = {k.replace(".norm.weight", ".norm.submodule.weight")
                .replace("norm_f.weight", "norm_f.submodule.weight"): v
               for k, v in tensors.items()}
    model = convert.model_from_tensors(renamed, cfg)
    assert rel_err(both_strands(model, ids)[0], want) > 1e-2


# --- the strand swap itself -----------------------------------------------------------------


def test_swap_strands_exchanges_the_channel_halves():
    h_2BLD = jax.random.normal(jax.random.key(3), (4, 7, 5))
    h_BLC = rcps.to_channels(h_2BLD)
    first, second = jnp.split(h_BLC, 2, axis=-1)
    swapped = rcps.to_channels(rcps.swap_strands(h_2BLD))
    np.testing.assert_array_equal(swapped, jnp.concatenate([second, first], axis=-1))
    np.testing.assert_array_equal(rcps.swap_strands(rcps.swap_strands(h_2BLD)), h_2BLD)


def test_swap_needs_rcps():
    with pytest.raises(ValueError, match="rcps_swap_strands"):
        ModelConfig(rcps=False, rcps_swap_strands=True)


# --- export and round trips -----------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_export_rewrites_the_official_file_and_round_trips_bitwise(name, tmp_path):
    hf_dir = fixture(name)[0]
    model, cfg = convert.from_hf(hf_dir)
    convert.to_hf(model, cfg, str(tmp_path))
    official = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
    ours = safetensors.numpy.load_file(os.path.join(tmp_path, "model.safetensors"))
    assert sorted(ours) == sorted(official)
    for k, v in official.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        np.testing.assert_array_equal(ours[k], v, err_msg=k)
    model2, cfg2 = convert.from_hf(str(tmp_path))
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(model2), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    with open(os.path.join(tmp_path, "config.json")) as f:
        exported = json.load(f)
    for key in ("d_model", "n_layer", "rcps", "bidirectional", "bidirectional_weight_tie",
                "complement_map", "vocab_size", "norm_epsilon", "rms_norm"):
        assert exported[key] == hf[key], key
    # Caduceus-Ph's fused path is the unfused function: exported unfused (needs no Triton).
    assert exported["fused_add_norm"] == (hf["fused_add_norm"] and hf["rcps"])


@pytest.mark.parametrize("variant", [
    {"tie_in_out_proj": False}, {"bidirectional": False, "rcps": False},
    {"rcps_swap_strands": True, "n_layers": 5, "d_model": 48},
])
def test_round_trip_of_fresh_models(variant, tmp_path):
    """Layouts without an official fixture: untied reverse mixer, unidirectional Ph, another
    width (dt_rank 3) and depth."""
    cfg = dataclasses.replace(sizes.get("caduceus_tiny"), **{
        "d_model": 16, "n_layers": 2, "d_state": 4, "scan_impl": "ref", **variant})
    model = random_model(cfg)
    convert.to_hf(model, cfg, str(tmp_path))
    model2, cfg2 = convert.from_hf(str(tmp_path))
    assert dataclasses.replace(cfg2, scan_impl="ref", max_len=cfg.max_len) == cfg
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(model2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_from_hf_writes_a_checkpoint_eval_loads_and_to_hf_reads(tmp_path, capsys):
    hf_dir, ids, want, _ = fixture("ps_fused_d32_l3")
    ckpt = tmp_path / "ckpt"
    assert convert.main(["from-hf", hf_dir, "--out", str(ckpt)]) == 0
    model, config, _ = load_model(str(ckpt))
    assert config.model.rcps_swap_strands and config.model.n_layers == 3
    assert rel_err(both_strands(model, ids)[0], want) < REL_TOL
    out = tmp_path / "hf"
    assert convert.main(["to-hf", str(ckpt), "--out", str(out)]) == 0
    official = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
    ours = safetensors.numpy.load_file(str(out / "model.safetensors"))
    assert sorted(ours) == sorted(official)
    for k in official:
        np.testing.assert_array_equal(ours[k], official[k], err_msg=k)
    # A second import into the same workdir is refused, not overwritten.
    assert convert.main(["from-hf", hf_dir, "--out", str(ckpt)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


# --- refusals -------------------------------------------------------------------------------


def edited_copy(tmp_path, name="ps_fused_d32_l2", config=None, drop=(), add=None):
    """A copy of a fixture folder with config.json keys changed and tensors dropped/added."""
    src, dst = os.path.join(DATA, name), tmp_path / "hf"
    shutil.copytree(src, dst)
    os.chmod(dst, 0o755)
    for f in os.listdir(dst):
        os.chmod(dst / f, 0o644)
    with open(dst / "config.json") as f:
        hf = json.load(f)
    hf.update(config or {})
    with open(dst / "config.json", "w") as f:
        json.dump(hf, f)
    tensors = safetensors.numpy.load_file(str(dst / "model.safetensors"))
    tensors = {k: v for k, v in tensors.items() if k not in drop}
    tensors.update(add or {})
    safetensors.numpy.save_file(tensors, str(dst / "model.safetensors"))
    return str(dst)


@pytest.mark.parametrize("config, setting", [
    ({"bidirectional_strategy": "ew_multiply"}, "bidirectional_strategy"),
    ({"rms_norm": False}, "rms_norm"),
    ({"norm_epsilon": 1e-6}, "norm_epsilon"),
    ({"vocab_size": 16}, "vocab_size"),
    ({"complement_map": {"0": 0, "1": 1, "2": 2, "3": 4, "4": 3, "5": 6, "6": 5}},
     "complement_map"),
    ({"ssm_cfg": {"bias": True}}, "ssm_cfg.bias"),
    ({"ssm_cfg": {"dt_rank": 7}}, "dt_rank"),
    ({"ssm_cfg": {"ngroups": 2}}, "ngroups"),
    ({"some_new_switch": 1}, "some_new_switch"),
    ({"architectures": ["CaduceusForSequenceClassification"]}, "architectures"),
    ({"residual_in_fp32": False, "torch_dtype": "bfloat16"}, "residual_in_fp32"),
])
def test_unsupported_settings_are_refused_in_one_line(tmp_path, capsys, config, setting):
    hf_dir = edited_copy(tmp_path, config=config)
    with pytest.raises(convert.ConvertError, match=setting.replace(".", r"\.")):
        convert.from_hf(hf_dir)
    assert convert.main(["from-hf", hf_dir, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and setting in err
    assert not (tmp_path / "out").exists()


def test_residual_in_fp32_false_is_accepted_for_float32_weights(tmp_path):
    _, ids, want, _ = fixture("ps_fused_d32_l2")
    model, _ = convert.from_hf(edited_copy(tmp_path, config={"residual_in_fp32": False}))
    assert rel_err(both_strands(model, ids)[0], want) < REL_TOL


def test_tensor_problems_are_refused(tmp_path):
    name = "caduceus.backbone.layers.1.mixer.submodule.mamba_fwd.A_log"
    with pytest.raises(convert.ConvertError, match="missing tensor.*A_log"):
        convert.from_hf(edited_copy(tmp_path / "a", drop=[name]))
    extra = {"score.weight": np.ones((2, 32), np.float32)}
    with pytest.raises(convert.ConvertError, match="unexpected tensor 'score.weight'"):
        convert.from_hf(edited_copy(tmp_path / "b", add=extra))
    # An LM head stored separately must equal the embedding (nanodna ties them).
    head = {"lm_head.lm_head.weight": np.ones((8, 32), np.float32)}
    with pytest.raises(convert.ConvertError, match="lm_head.lm_head.weight"):
        convert.from_hf(edited_copy(tmp_path / "c", add=head))


def test_stored_tied_copies_are_accepted(tmp_path):
    """Exports that keep both names of a tied pair (e.g. from a state_dict) import the same."""
    hf_dir, ids, want, _ = fixture("ps_fused_d32_l2")
    tensors = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
    copies = {"lm_head.lm_head.weight":
              tensors["caduceus.backbone.embeddings.word_embeddings.embedding.weight"]}
    for k, v in tensors.items():
        if ".mamba_fwd.in_proj" in k or ".mamba_fwd.out_proj" in k:
            copies[k.replace("mamba_fwd", "mamba_rev")] = v
    model, _ = convert.from_hf(edited_copy(tmp_path, add=copies))
    assert rel_err(both_strands(model, ids)[0], want) < REL_TOL


def test_pytorch_bin_without_torch_is_refused_with_a_pointer_to_safetensors(
        tmp_path, monkeypatch):
    hf_dir = edited_copy(tmp_path)
    os.remove(os.path.join(hf_dir, "model.safetensors"))
    with open(os.path.join(hf_dir, "pytorch_model.bin"), "wb") as f:
        f.write(b"not read")  # never unpickled: the refusal comes before any read
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(convert.ConvertError, match="safetensors") as e:
        convert.from_hf(hf_dir)
    assert "\n" not in str(e.value)


class _FakeTensor:
    """Just enough of torch.Tensor for the converter's pytorch_model.bin path."""

    def __init__(self, a):
        self.a = a

    def is_floating_point(self):
        return np.issubdtype(self.a.dtype, np.floating)

    def detach(self):
        return self

    def float(self):
        return _FakeTensor(self.a.astype(np.float32))

    def numpy(self):
        return self.a


def test_pytorch_bin_goes_through_torchs_restricted_loader(tmp_path, monkeypatch):
    """With torch present, pytorch_model.bin is read by torch.load(weights_only=True) only."""
    hf_dir, ids, want, _ = fixture("ps_nonfused_d32_l2")
    tensors = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
    copy = edited_copy(tmp_path, name="ps_nonfused_d32_l2")
    os.remove(os.path.join(copy, "model.safetensors"))
    open(os.path.join(copy, "pytorch_model.bin"), "wb").close()
    calls = []

    def fake_load(path, map_location=None, weights_only=False):
        calls.append(weights_only)
        return {k: _FakeTensor(v.astype(np.float16) if v.dtype == np.float32 else v)
                for k, v in tensors.items()}

    monkeypatch.setitem(sys.modules, "torch", type(sys)("torch"))
    monkeypatch.setattr(sys.modules["torch"], "load", fake_load, raising=False)
    model, _ = convert.from_hf(copy)
    assert calls == [True]
    # float16 copies of the weights: close to the official logits, not exact.
    assert rel_err(both_strands(model, ids)[0], want) < 1e-2
