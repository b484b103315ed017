"""kernels/cpu, the fused C++ selective scan: its build, its two code paths, sharding, errors.

Parity of outputs and all gradients with the float64 reference, through nanodna.ops, is in
test_scan_vjp.py (impl "cpu"); here the kernel is called directly: float64 inputs (the scalar
path, which must agree to rounding), the float32 vector path at every N it takes (D_BLOCK + 2
channels: two work items' blocks, groups of W = 8 or 16 channels, then two left over for the
scalar path), a batch split over a mesh, vmap, what a user sees when no compiler is there, the
gated op (bias + softplus, both directions, skip and gate in one pass) and its backward, and
(slow) the A/B harness benchmarks/bench_kernel_ab.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import cpu as cpu_kernel
from kernels.cpu import build
from kernels.cpu import selective_scan as scan_module
from kernels.cpu.selective_scan import CHUNK, D_BLOCK, gated_unfused
from nanodna.ops import random_scan_inputs, selective_scan, selective_scan_bidirectional
from nanodna.ops.scan import bidirectional_scan_ref

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason="no C++ compiler")


def core_inputs(seed, S, Bsz, L, Dch, N, dtype=jnp.float32):
    """(u, dt, A, B, C) as the kernel takes them: dt already positive (softplus applied)."""
    x = random_scan_inputs(jax.random.key(seed), Bsz, L, Dch, N, dtype, S=S)
    return x["u"], jax.nn.softplus(x["delta"]), x["A"].astype(dtype), x["B"], x["C"]


def reference(u, dt, A, B, C, reverse, bidirectional):
    """A plain lax.scan of the recurrence per direction, in u's dtype."""
    def one(u, dt, A, B, C, rev):
        def step(h, xs):
            u_t, dt_t, B_t, C_t = xs  # (B, D), (B, D), (B, N), (B, N)
            h = jnp.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * B_t[:, None, :]
            return h, jnp.einsum("bdn,bn->bd", h, C_t)
        xs = tuple(jnp.swapaxes(a, 0, 1) for a in (u, dt, B, C))
        h0 = jnp.zeros((u.shape[0], u.shape[2], A.shape[-1]), u.dtype)
        return jnp.swapaxes(jax.lax.scan(step, h0, xs, reverse=rev)[1], 0, 1)
    return jnp.stack([one(u[s], dt[s], A[s], B[s], C[s], reverse != (bidirectional and s == 1))
                      for s in range(u.shape[0])])


def grads(fn, args, w):
    return jax.jit(jax.value_and_grad(lambda a: jnp.sum(fn(*a) * w)))(args)


@pytest.mark.parametrize("reverse,bidirectional", [(False, False), (True, False), (False, True)])
def test_float64_scalar_path_agrees_to_rounding(reverse, bidirectional):
    with jax.enable_x64(True):
        args = core_inputs(1, 2, 3, 23, 70, 5, jnp.float64)
        w = jax.random.normal(jax.random.key(2), args[0].shape, jnp.float64)
        kernel = functools.partial(cpu_kernel.selective_scan_cpu, reverse=reverse,
                                   bidirectional=bidirectional)
        ref = functools.partial(reference, reverse=reverse, bidirectional=bidirectional)
        (v, g), (v_ref, g_ref) = grads(kernel, args, w), grads(ref, args, w)
        np.testing.assert_allclose(kernel(*args), ref(*args), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(v, v_ref, rtol=1e-10)
        for name, a, b in zip("u dt A B C".split(), g, g_ref, strict=True):
            assert np.abs(np.asarray(b)).max() > 0
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11 * np.abs(b).max(),
                                       err_msg=name)


@pytest.mark.parametrize("N", [4, 8, 16, 32, 64, 12])  # the vector paths, then the scalar path
def test_float32_paths_match_float64(N):
    args64 = None
    with jax.enable_x64(True):
        args64 = core_inputs(3 + N, 2, 2, 29, D_BLOCK + 2, N, jnp.float64)  # two blocks
        w64 = jax.random.normal(jax.random.key(4), args64[0].shape, jnp.float64)
        ref = functools.partial(reference, reverse=False, bidirectional=True)
        y_ref = np.asarray(ref(*args64))
        _, g_ref = grads(ref, args64, w64)
        g_ref = [np.asarray(g) for g in g_ref]
    args = tuple(jnp.asarray(np.asarray(a), jnp.float32) for a in args64)
    kernel = functools.partial(cpu_kernel.selective_scan_cpu, bidirectional=True)
    y = np.asarray(kernel(*args))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5 * np.abs(y_ref).max())
    _, g = grads(kernel, args, jnp.asarray(np.asarray(w64), jnp.float32))
    for name, a, b in zip("u dt A B C".split(), g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * np.abs(b).max(), err_msg=name)


def test_batch_split_over_a_mesh_runs_per_device_and_matches():
    assert len(jax.devices()) == 8  # tests/conftest.py forces 8 host devices
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    P = jax.sharding.PartitionSpec
    x = random_scan_inputs(jax.random.key(5), 8, 21, 12, 16, S=2)
    split = {k: jax.device_put(v, jax.sharding.NamedSharding(
        mesh, P(None, "data") if k in ("u", "delta", "B", "C") else P())) for k, v in x.items()}

    def loss(x):
        return jnp.sum(jnp.sin(selective_scan_bidirectional(**x, delta_softplus=True, impl="cpu")))

    assert "shard_map" in str(jax.make_jaxpr(loss)(split))
    assert "shard_map" not in str(jax.make_jaxpr(loss)(x))
    value, g = jax.jit(jax.value_and_grad(loss))(split)
    value_ref, g_ref = jax.jit(jax.value_and_grad(
        lambda x: jnp.sum(jnp.sin(bidirectional_scan_ref(**x, delta_softplus=True)))))(x)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    for k in x:
        if x[k] is not None:
            np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-4,
                                       atol=1e-4 * np.abs(g_ref[k]).max(), err_msg=k)


def test_vmap_over_an_extra_axis():
    x = random_scan_inputs(jax.random.key(6), 2, 9, 8, 8)
    batched = {k: jnp.stack([v, 2 * v]) if k in ("u", "z") else v for k, v in x.items()}
    f = lambda u, z: selective_scan(**dict(x, u=u, z=z), delta_softplus=True, impl="cpu")  # noqa: E731
    ys = jax.vmap(f)(batched["u"], batched["z"])
    for i in range(2):
        np.testing.assert_allclose(ys[i], f(batched["u"][i], batched["z"][i]), rtol=1e-6)


def test_no_compiler_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NANODNA_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler found") as info:
        build._build()
    assert "\n" not in str(info.value)
    # an explicit impl="cpu" says why it cannot run, instead of an XLA error
    monkeypatch.setitem(build._state, "lib", None)
    monkeypatch.setitem(build._state, "error", "no C++ compiler found (set CXX)")
    with pytest.raises(RuntimeError, match="CPU scan kernel is unavailable: no C\\+\\+ compiler"):
        cpu_kernel.selective_scan_cpu(*core_inputs(7, 1, 1, 4, 8, 8))


def test_library_is_built_once_and_cached(monkeypatch):
    first = build._build()
    calls = []
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: calls.append(a))
    assert build._build() == first and first.exists() and not calls


def test_shapes_that_disagree_are_an_error_not_a_crash():
    """The kernel checks its buffers itself (the wrapper's shapes are also type-checked)."""
    u, dt, A, B, C = core_inputs(8, 1, 2, 6, 8, 8)
    call = jax.ffi.ffi_call("nanodna_scan_fwd_f32", jax.ShapeDtypeStruct(u.shape, u.dtype))
    attrs = dict(reverse=np.bool_(False), bidirectional=np.bool_(False), d_block=np.int64(64))
    with pytest.raises(Exception, match="A must be \\(S, D, N\\)"):
        jax.block_until_ready(call(u, dt, A[:, :4], B, C, **attrs))
    with pytest.raises(Exception, match="u must be \\(S, B, L, D\\)"):
        jax.block_until_ready(call(u[0], dt[0], A, B[0], C[0], **attrs))


def test_another_cpu_never_reuses_the_cached_library(monkeypatch):
    """-march=native code is keyed by the CPU: a cache shared by different machines (an NFS
    home on a cluster) must build again rather than hand a node another CPU's instructions."""
    build._build()  # this machine's library is cached
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return build.subprocess.CompletedProcess(cmd, 1, "", "fake compiler: no")

    monkeypatch.setattr(build, "_cpu_id", lambda: "model name : some other CPU")
    monkeypatch.setattr(build.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="could not build"):
        build._build()
    assert calls  # it tried to compile instead of loading this machine's library


def gated_inputs(seed, Bsz, L, Dch, N):
    """(u, dt_raw, A, B, C, bias, D, z) for the gated op, with wide dt_raw (both softplus
    branches, exp(-|x|) down to ~1e-9) and wide z (both SiLU tails)."""
    x = random_scan_inputs(jax.random.key(seed), Bsz, L, Dch, N, S=2)
    wide = jax.random.normal(jax.random.key(seed + 1), x["delta"].shape) * 6.0
    z = x["z"] * 8.0
    return (x["u"], wide, x["A"], x["B"], x["C"], x["delta_bias"], x["D"], z)


@pytest.mark.parametrize("N", [4, 16, 64])
def test_gated_op_matches_the_unfused_composition_and_the_reference(N):
    args = gated_inputs(20 + N, 3, 37, 64, N)  # 64 channels: 4 or 8 vectors of lanes
    y = np.asarray(cpu_kernel.bidirectional_gated_scan_cpu(*args))
    y_unfused = np.asarray(gated_unfused(*args))
    assert np.isfinite(y).all() and (y != 0).mean() > 0.99  # every element written
    np.testing.assert_allclose(y, y_unfused, rtol=1e-5, atol=1e-6 * np.abs(y_unfused).max())
    u, dt_raw, A, B, C, bias, D, z = args
    y_ref = bidirectional_scan_ref(u, dt_raw, A, B, C, D, z, bias, delta_softplus=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5 * np.abs(y_ref).max())


@pytest.mark.parametrize(
    "N,L,chunk",
    [(4, 21, CHUNK), (16, 21, CHUNK),  # one chunk, shorter than CHUNK
     (16, 2 * CHUNK + 5, CHUNK),  # three chunks, the last (first replayed) of 5 steps
     (8, 21, 8)])  # three chunks of a smaller CHUNK, the last of 5 steps
def test_gated_op_gradient_matches_the_unfused_and_float64_gradients(N, L, chunk, monkeypatch):
    """The gated op's own backward (one kernel call: both scans' backward, chunk by chunk from
    the states the forward saved, softplus, skip and gate) against autodiff of gated_unfused
    (the scan kernel's backward, XLA elementwise) and of the lax.scan reference in float64.
    D_BLOCK + 16 channels: groups of 16 lanes in two blocks."""
    monkeypatch.setattr(scan_module, "CHUNK", chunk)  # read when the forward is traced
    args = gated_inputs(30 + N + L, 2, L, D_BLOCK + 16, N)
    w = jax.random.normal(jax.random.key(31), args[0].shape[1:])
    loss = lambda fn: lambda *a: jnp.sum(fn(*a) * w)  # noqa: E731
    argnums = tuple(range(8))
    g = jax.jit(jax.grad(loss(cpu_kernel.bidirectional_gated_scan_cpu), argnums))(*args)
    g_unfused = jax.jit(jax.grad(loss(gated_unfused), argnums))(*args)

    def ref(u, dt_raw, A, B, C, bias, D, z):
        return bidirectional_scan_ref(u, dt_raw, A, B, C, D, z, bias, delta_softplus=True)

    with jax.enable_x64(True):
        args64 = [jnp.asarray(np.asarray(a), jnp.float64) for a in args]
        w64 = jnp.asarray(np.asarray(w), jnp.float64)
        g64 = jax.grad(lambda *a: jnp.sum(ref(*a) * w64), argnums)(*args64)
        g64 = [np.asarray(x) for x in g64]
    names = "u dt_raw A B C bias D z".split()
    for name, a, b, c in zip(names, g, g_unfused, g64, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == c.shape and np.isfinite(a).all() and np.abs(c).max() > 0, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max(), err_msg=name)
        np.testing.assert_allclose(a, c, rtol=1e-3, atol=1e-4 * np.abs(c).max(), err_msg=name)


def test_bidirectional_scan_takes_the_gated_op_only_where_it_applies():
    def targets(Dch, dtype=jnp.float32, **drop):
        x = random_scan_inputs(jax.random.key(40), 2, 9, Dch, 16, dtype, S=2)
        x.update(drop)
        fn = lambda x: selective_scan_bidirectional(**x, delta_softplus=True, impl="cpu")  # noqa: E731
        return str(jax.make_jaxpr(fn)(x))

    assert "nanodna_scan_gated_fwd_f32" in targets(48)
    assert "nanodna_scan_gated_fwd_f32" not in targets(40)  # 40 channels: not whole vectors
    assert "nanodna_scan_gated_fwd_f32" not in targets(48, z=None)  # no gate
    with jax.enable_x64(True):
        assert "nanodna_scan_gated_fwd_f32" not in targets(48, jnp.float64)


def test_gated_op_refuses_shapes_it_does_not_take():
    args = list(gated_inputs(50, 1, 5, 12, 16))  # 12 channels: not a multiple of the lanes
    with pytest.raises(Exception, match="divisible by"):
        jax.block_until_ready(cpu_kernel.bidirectional_gated_scan_cpu(*args))


@pytest.mark.slow
def test_kernel_ab_harness_builds_and_two_equal_versions_agree_exactly():
    """benchmarks/bench_kernel_ab.py (two kernel versions timed in one process) compiles against
    the kernel's internal functions, runs every function, and reports a's and b's outputs as
    equal when a and b are the same files."""
    import pathlib
    import subprocess
    import sys

    if build._compiler() is None:
        pytest.skip("no C++ compiler")
    done = subprocess.run([sys.executable, "benchmarks/bench_kernel_ab.py", "--a", "worktree",
                           "--repeats", "1", "--length", "40"], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("scan forward", "scan backward", "gated forward", "gated backward"):
        assert f"| {name} |" in done.stdout
    assert "gated forward y 0.0e+00, gated backward du, ddt 0.0e+00" in done.stdout
