"""Caduceus / PlantCaduceus checkpoints in the Hugging Face layout <-> nanodna checkpoints.

    python -m nanodna.convert from-hf DIR --out CKPT    # config.json + model.safetensors -> CKPT
    python -m nanodna.convert to-hf CKPT --out DIR      # a nanodna Caduceus -> the HF layout

The HF layout is the one kuleshov-group/caduceus (`CaduceusForMaskedLM`, modeling_caduceus.py
and modeling_rcps.py) saves and PlantCaduceus publishes: `config.json` (a `CaduceusConfig`)
and `model.safetensors`. Every setting of config.json that changes the function either maps
onto a ModelConfig field or, if nanodna does not implement it, is refused with one line naming
it. `fused_add_norm` maps onto ModelConfig.rcps_swap_strands for Caduceus-PS: the official
fused path is a different function (see nanodna.models.rcps), and the released PlantCaduceus
models were trained with it.

Weights are read with the `safetensors` package as NumPy arrays. Safetensors exports of tied
models store each shared tensor once, so a missing name falls back to its partner: the LM head
is the embedding, and with `bidirectional_weight_tie` the reverse mixer's in_proj / out_proj
are the forward mixer's. A `pytorch_model.bin` is read only with PyTorch's restricted loader
(`torch.load(..., weights_only=True)`, the optional `torch` extra); nanodna never unpickles.

The CKPT written here is a nanodna workdir (config.json + checkpoints/0/), the form eval.py
and `nanodna.checkpoint.load_model` read.

Glossary: V vocabulary, D d_model, E d_inner, N d_state, W conv width, Q dt_rank.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

import equinox as eqx
import jax
import numpy as np
import safetensors.numpy

from nanodna import checkpoint as ckpt_io
from nanodna.config import Config
from nanodna.data.config import DataConfig
from nanodna.errors import UserError, fail
from nanodna.models import ModelConfig, build_model
from nanodna.tokenizer import COMPLEMENT, VOCAB_SIZE

CONFIG_FILE, SAFETENSORS_FILE = "config.json", "model.safetensors"
SAFETENSORS_INDEX, TORCH_FILE = "model.safetensors.index.json", "pytorch_model.bin"

# config.json keys that only describe initialisation, training or HF bookkeeping: they do not
# change the function a checkpoint computes, so import ignores them.
_IGNORED_KEYS = {
    "architectures", "model_type", "initializer_cfg", "pad_token_id", "torch_dtype",
    "transformers_version", "auto_map", "name_or_path", "_name_or_path", "bos_token_id",
    "eos_token_id", "tie_word_embeddings", "return_dict", "output_hidden_states",
    "output_attentions", "use_return_dict", "problem_type", "num_labels", "id2label",
    "label2id",
}
_SSM_IGNORED = {"dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path",
                "layer_idx"}  # initialisation of dt / a CUDA kernel switch
# The official defaults (CaduceusConfig, mamba-ssm v1 Mamba) for keys a config may leave out.
_DEFAULTS = {"rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
             "pad_vocab_size_multiple": 8, "norm_epsilon": 1e-5, "bidirectional": True,
             "bidirectional_strategy": "add", "bidirectional_weight_tie": True, "rcps": False}
_SSM_DEFAULTS = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "conv_bias": True,
                 "bias": False}
NORM_EPS = 1e-5  # nanodna's RMSNorm epsilon (nanodna.models.layers.RMSNorm)


class ConvertError(UserError):
    """A checkpoint nanodna cannot import or export (the message names the setting)."""


# --- config.json <-> ModelConfig ------------------------------------------------------------


def model_config_from_hf(hf: dict) -> ModelConfig:
    """A CaduceusConfig dict (config.json) -> ModelConfig; ConvertError names the first
    setting nanodna does not implement."""
    known = set(_DEFAULTS) | _IGNORED_KEYS | {"d_model", "n_layer", "vocab_size", "ssm_cfg",
                                              "complement_map"}
    for key in hf:
        if key not in known:
            raise ConvertError(f"config.json: unknown setting {key!r} (nanodna does not "
                               "implement it)")
    arch = hf.get("architectures") or ["CaduceusForMaskedLM"]
    if arch != ["CaduceusForMaskedLM"]:
        raise ConvertError(f"config.json: architectures {arch}; only CaduceusForMaskedLM imports")
    if hf.get("model_type", "caduceus") != "caduceus":
        raise ConvertError(f"config.json: model_type {hf['model_type']!r}, expected 'caduceus'")
    c = {**_DEFAULTS, **hf}
    if not c["rms_norm"]:
        raise ConvertError("config.json: rms_norm=false (LayerNorm) is not implemented")
    if float(c["norm_epsilon"]) != NORM_EPS:
        raise ConvertError(f"config.json: norm_epsilon {c['norm_epsilon']} "
                           f"(nanodna uses {NORM_EPS})")
    # nanodna keeps the residual stream in float32; with float32 weights (as released) the
    # official residual_in_fp32=false computes the same, but a half-precision one would not.
    if not c["residual_in_fp32"] and hf.get("torch_dtype", "float32") != "float32":
        raise ConvertError("config.json: residual_in_fp32=false with torch_dtype "
                           f"{hf['torch_dtype']} (nanodna keeps the residual in float32)")
    if c["bidirectional"] and c["bidirectional_strategy"] not in (None, "add"):
        raise ConvertError(f"config.json: bidirectional_strategy "
                           f"{c['bidirectional_strategy']!r}; nanodna implements only 'add'")
    ssm = {**_SSM_DEFAULTS, **(hf.get("ssm_cfg") or {})}
    for key in ssm:
        if key not in _SSM_DEFAULTS and key not in _SSM_IGNORED:
            raise ConvertError(f"config.json: unknown ssm_cfg setting {key!r}")
    if ssm["bias"]:
        raise ConvertError("config.json: ssm_cfg.bias=true (in/out projection biases) is not "
                           "implemented")
    if not ssm["conv_bias"]:
        raise ConvertError("config.json: ssm_cfg.conv_bias=false is not implemented")
    d_model = int(c["d_model"])
    if ssm["dt_rank"] not in ("auto", math.ceil(d_model / 16)):
        raise ConvertError(f"config.json: ssm_cfg.dt_rank {ssm['dt_rank']}; nanodna uses "
                           f"'auto' = ceil(d_model / 16) = {math.ceil(d_model / 16)}")
    vocab = int(c["vocab_size"])
    mult = int(c["pad_vocab_size_multiple"])
    vocab += (-vocab) % mult  # the official model pads the vocabulary (Caduceus.__init__)
    if vocab != VOCAB_SIZE:
        raise ConvertError(f"config.json: vocab_size {vocab} after padding; nanodna's "
                           f"tokenizer has {VOCAB_SIZE}")
    has_map = c.get("complement_map") is not None or c["rcps"]
    if has_map and _complement_map(c.get("complement_map"), vocab).tolist() != COMPLEMENT.tolist():
        raise ConvertError("config.json: complement_map differs from nanodna's tokenizer "
                           f"(expected {dict(enumerate(COMPLEMENT.tolist()))})")
    return ModelConfig(
        arch="caduceus", d_model=d_model, n_layers=int(c["n_layer"]), vocab_size=vocab,
        d_state=int(ssm["d_state"]), d_conv=int(ssm["d_conv"]), expand=int(ssm["expand"]),
        rcps=bool(c["rcps"]), bidirectional=bool(c["bidirectional"]),
        tie_in_out_proj=bool(c["bidirectional_weight_tie"]),
        # For Caduceus-Ph the fused and unfused paths compute the same function.
        rcps_swap_strands=bool(c["fused_add_norm"]) and bool(c["rcps"]),
    )


def _complement_map(cmap: dict | None, vocab: int) -> np.ndarray:
    """config.json's {"id": complement id}, extended with identity up to vocab (as the
    official Caduceus.__init__ does for the padded ids)."""
    if cmap is None:
        raise ConvertError("config.json: rcps=true needs a complement_map")
    out = np.arange(vocab)
    for k, v in cmap.items():
        if int(k) >= vocab:
            raise ConvertError(f"config.json: complement_map id {k} >= vocab_size {vocab}")
        out[int(k)] = int(v)
    return out


def model_config_to_hf(cfg: ModelConfig) -> dict:
    """ModelConfig -> config.json for the official CaduceusForMaskedLM. Init-only settings get
    the official defaults; fused_add_norm is rcps_swap_strands (false for Caduceus-Ph, whose
    fused path is the same function and needs the Triton kernels)."""
    _check_exportable(cfg)
    return {
        "architectures": ["CaduceusForMaskedLM"],
        "model_type": "caduceus",
        "d_model": cfg.d_model,
        "n_layer": cfg.n_layers,
        "vocab_size": cfg.vocab_size,
        "pad_vocab_size_multiple": 8,
        "ssm_cfg": {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
                    "dt_rank": "auto", "conv_bias": True, "bias": False},
        "rms_norm": True,
        "norm_epsilon": NORM_EPS,
        "residual_in_fp32": True,
        "fused_add_norm": cfg.rcps_swap_strands,
        "bidirectional": cfg.bidirectional,
        "bidirectional_strategy": "add" if cfg.bidirectional else None,
        "bidirectional_weight_tie": cfg.tie_in_out_proj,
        "rcps": cfg.rcps,
        "complement_map": {str(i): int(c) for i, c in enumerate(COMPLEMENT)},
        "torch_dtype": "float32",
    }


def _check_exportable(cfg: ModelConfig) -> None:
    if cfg.arch != "caduceus":
        raise ConvertError(f"model.arch {cfg.arch!r}: only Caduceus exports to the HF layout")
    if cfg.vocab_size != VOCAB_SIZE:
        raise ConvertError(f"model.vocab_size {cfg.vocab_size}: the HF layout export assumes "
                           f"nanodna's tokenizer ({VOCAB_SIZE} ids)")


# --- tensor names ---------------------------------------------------------------------------

_SSM_NAMES = {  # nanodna SelectiveSSM field -> mamba-ssm Mamba parameter
    "conv_weight": "conv1d.weight", "conv_bias": "conv1d.bias", "x_proj.weight": "x_proj.weight",
    "dt_proj.weight": "dt_proj.weight", "dt_proj.bias": "dt_proj.bias", "A_log": "A_log", "D": "D",
}
_PROJ_NAMES = {"in_proj.weight": "in_proj.weight", "out_proj.weight": "out_proj.weight"}


def _names(cfg: ModelConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(global, per-layer) maps from nanodna parameter paths to HF names. Per-layer names hold
    `{i}` for the layer index; nanodna stacks those arrays along a leading layer axis."""
    bb = "caduceus.backbone."
    ps = cfg.rcps
    emb = bb + ("embeddings.word_embeddings.embedding.weight" if ps
                else "embeddings.word_embeddings.weight")
    wrap = ".submodule" if ps and not cfg.rcps_swap_strands else ""  # RCPSAddNormWrapper
    glob = {"embed": emb, "norm_f.weight": f"{bb}norm_f{wrap}.weight"}
    mixer = bb + "layers.{i}.mixer" + (".submodule" if ps else "")  # RCPSWrapper
    layer = {"norm.weight": bb + "layers.{i}.norm" + wrap + ".weight"}
    for ours, theirs in {**_PROJ_NAMES, **_SSM_NAMES}.items():
        ours_fwd = "mixer.fwd." + (ours if ours in _PROJ_NAMES else "ssm." + ours)
        layer[ours_fwd] = f"{mixer}.mamba_fwd.{theirs}"
    if cfg.bidirectional:
        for ours, theirs in _SSM_NAMES.items():
            tied_rev = "mixer.rev." + ours if cfg.tie_in_out_proj else "mixer.rev.ssm." + ours
            layer[tied_rev] = f"{mixer}.mamba_rev.{theirs}"
        if not cfg.tie_in_out_proj:
            for ours, theirs in _PROJ_NAMES.items():
                layer["mixer.rev." + ours] = f"{mixer}.mamba_rev.{theirs}"
    return glob, layer


def _aliases(cfg: ModelConfig) -> dict[str, str]:
    """HF names that a safetensors export may leave out -> the name holding the same tensor."""
    glob, layer = _names(cfg)
    head = "lm_head.lm_head.weight" if cfg.rcps else "lm_head.weight"
    out = {head: glob["embed"]}
    if cfg.bidirectional and cfg.tie_in_out_proj:
        for i in range(cfg.n_layers):
            for ours in _PROJ_NAMES:
                fwd = layer["mixer.fwd." + ours].format(i=i)
                out[fwd.replace(".mamba_fwd.", ".mamba_rev.")] = fwd
    return out


def _buffers(cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The RCPS modules' complement_map buffers (int64), stored beside the weights."""
    if not cfg.rcps:
        return {}
    cmap = COMPLEMENT.astype(np.int64)
    return {"caduceus.backbone.embeddings.word_embeddings.complement_map": cmap,
            "lm_head.complement_map": cmap.copy()}


def _path(keypath) -> str:
    return ".".join(str(getattr(k, "name", getattr(k, "key", k))) for k in keypath)


def _to_ours(name: str, a: np.ndarray) -> np.ndarray:
    return a[:, 0, :] if name.endswith("conv1d.weight") else a  # (E, 1, W) -> (E, W)


def _to_theirs(name: str, a: np.ndarray) -> np.ndarray:
    return a[:, None, :] if name.endswith("conv1d.weight") else a


# --- weights <-> model ----------------------------------------------------------------------


def model_from_tensors(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> eqx.Module:
    """HF tensors -> a nanodna Caduceus for cfg. Missing tied names fall back to their partner;
    a present tied copy must equal it; leftover or missing tensors raise ConvertError."""
    glob, layer = _names(cfg)
    aliases = _aliases(cfg)
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        if name not in tensors and name in aliases:
            name = aliases[name]
        if name not in tensors:
            raise ConvertError(f"weights: missing tensor {name!r}")
        used.add(name)
        return np.asarray(tensors[name])

    for name, partner in aliases.items():
        if name in tensors:  # stored twice: the tie must hold
            if not np.array_equal(tensors[name], get(partner)):
                raise ConvertError(f"weights: {name!r} differs from {partner!r}; nanodna ties them")
            used.add(name)
    for name, buf in _buffers(cfg).items():
        if name in tensors:
            if np.asarray(tensors[name]).tolist() != buf.tolist():
                raise ConvertError(f"weights: {name!r} differs from nanodna's complement map")
            used.add(name)

    arrays = {ours: _to_ours(theirs, get(theirs)) for ours, theirs in glob.items()}
    for ours, theirs in layer.items():
        per_layer = [_to_ours(theirs, get(theirs.format(i=i))) for i in range(cfg.n_layers)]
        arrays["blocks." + ours] = np.stack(per_layer)
    leftover = sorted(set(tensors) - used)
    if leftover:
        raise ConvertError(f"weights: unexpected tensor {leftover[0]!r} "
                           f"({len(leftover)} unused); not a {_describe(cfg)}")

    abstract = eqx.filter_eval_shape(build_model, cfg, jax.random.key(0))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    new_leaves = []
    for keypath, leaf in leaves:
        a = arrays.pop(_path(keypath), None)
        if a is None:
            raise AssertionError(f"no HF tensor mapped to {_path(keypath)}")  # a bug, not input
        if a.shape != leaf.shape:
            raise ConvertError(f"weights: {_path(keypath)} has shape {a.shape}, config.json "
                               f"implies {leaf.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise ConvertError(f"weights: {_path(keypath)} has dtype {a.dtype}, expected float")
        new_leaves.append(jax.numpy.asarray(a.astype(leaf.dtype)))
    assert not arrays, f"unmapped: {sorted(arrays)}"
    return jax.tree_util.tree_unflatten(treedef, new_leaves)


def model_to_tensors(model: eqx.Module, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """A nanodna Caduceus -> HF tensors, each shared tensor stored once (as safetensors
    exports of tied models do), plus the complement_map buffers."""
    _check_exportable(cfg)
    glob, layer = _names(cfg)
    params = {_path(kp): np.asarray(leaf) for kp, leaf in
              jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))[0]}
    out = {theirs: _to_theirs(theirs, params.pop(ours)) for ours, theirs in glob.items()}
    for ours, theirs in layer.items():
        stacked = params.pop("blocks." + ours)
        for i in range(cfg.n_layers):
            out[theirs.format(i=i)] = np.ascontiguousarray(_to_theirs(theirs, stacked[i]))
    if params:
        raise ConvertError(f"model: parameter {min(params)!r} has no HF name")
    out.update(_buffers(cfg))
    return out


def _describe(cfg: ModelConfig) -> str:
    kind = "Caduceus-PS" if cfg.rcps else "Caduceus-Ph"
    return f"{kind} d_model={cfg.d_model} n_layer={cfg.n_layers} as config.json describes"


# --- files ----------------------------------------------------------------------------------


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ConvertError(f"{hf_dir}: no {CONFIG_FILE} (not a Hugging Face model folder)")
    with open(path) as f:
        return json.load(f)


def read_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """model.safetensors (or its shards), else pytorch_model.bin through torch's restricted
    loader when torch is installed; ConvertError otherwise."""
    single = os.path.join(hf_dir, SAFETENSORS_FILE)
    if os.path.isfile(single):
        return dict(safetensors.numpy.load_file(single))
    index = os.path.join(hf_dir, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(safetensors.numpy.load_file(os.path.join(hf_dir, shard)))
        return out
    bin_path = os.path.join(hf_dir, TORCH_FILE)
    if os.path.isfile(bin_path):
        return _read_torch_bin(bin_path)
    raise ConvertError(f"{hf_dir}: no {SAFETENSORS_FILE} or {TORCH_FILE}")


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # optional extra: only for pytorch_model.bin
    except ImportError:
        raise ConvertError(
            f"{path}: a PyTorch pickle; install the torch extra (pip install 'nanodna[torch]') "
            "to read it with torch's restricted loader, or convert it to model.safetensors "
            "(e.g. the Hub's safetensors conversion)"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


def from_hf(hf_dir: str) -> tuple[eqx.Module, ModelConfig]:
    """A Caduceus / PlantCaduceus HF folder -> (nanodna model, ModelConfig).

    Raises ConvertError (a UserError) naming the first setting or tensor nanodna cannot take.
    """
    cfg = model_config_from_hf(read_hf_config(hf_dir))
    return model_from_tensors(read_hf_tensors(hf_dir), cfg), cfg


def to_hf(model: eqx.Module, cfg: ModelConfig, out_dir: str) -> None:
    """Write config.json and model.safetensors that the official CaduceusForMaskedLM loads."""
    tensors = model_to_tensors(model, cfg)
    hf_cfg = model_config_to_hf(cfg)
    os.makedirs(out_dir, exist_ok=True)
    # metadata format=pt: transformers refuses safetensors files without it.
    safetensors.numpy.save_file(tensors, os.path.join(out_dir, SAFETENSORS_FILE),
                                metadata={"format": "pt"})
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(hf_cfg, f, indent=2)


def import_hf(hf_dir: str, out: str) -> ModelConfig:
    """`from-hf`: convert an HF folder into the new nanodna workdir `out`."""
    model, cfg = from_hf(hf_dir)
    ckpt_io.save_model(model, Config(model=cfg, data=DataConfig()), out)
    return cfg


def export_hf(checkpoint: str, out_dir: str) -> ModelConfig:
    """`to-hf`: write a nanodna checkpoint (workdir or checkpoints/<step>) as an HF folder."""
    if not os.path.isdir(checkpoint):
        raise ConvertError(f"{checkpoint}: no such checkpoint folder")
    model, config, _ = ckpt_io.load_model(checkpoint)
    cfg = config.model
    to_hf(model, cfg, out_dir)
    return cfg


# --- command line ---------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanodna.convert",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("from-hf", help="HF Caduceus folder -> nanodna checkpoint")
    a.add_argument("hf_dir")
    a.add_argument("--out", required=True, help="new nanodna workdir")
    b = sub.add_parser("to-hf", help="nanodna checkpoint -> HF Caduceus folder")
    b.add_argument("checkpoint", help="nanodna workdir (latest step) or checkpoints/<step>")
    b.add_argument("--out", required=True, help="folder for config.json + model.safetensors")
    args = p.parse_args(argv)
    # Orbax logs its read-only restore settings as warnings through absl: not news to a user.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        if args.cmd == "from-hf":
            cfg = import_hf(args.hf_dir, args.out)
            kind = "Caduceus-PS" if cfg.rcps else "Caduceus-Ph"
            print(f"wrote {args.out} ({kind}, d_model {cfg.d_model}, {cfg.n_layers} layers, "
                  f"rcps_swap_strands {cfg.rcps_swap_strands})")
        else:
            export_hf(args.checkpoint, args.out)
            print(f"wrote {args.out}/{CONFIG_FILE} and {SAFETENSORS_FILE}")
    except (UserError, FileNotFoundError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
