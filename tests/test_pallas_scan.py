"""Pallas selective scan vs the lax.scan reference: outputs and every gradient, on CPU.

The kernels run in Pallas' interpreter here; the GPU/TPU programs are checked by lowering them
for those platforms (no device needed) and, on a GPU machine, by the `gpu`-marked twin.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

from benchmarks import bench_pallas
from kernels.pallas import Backend, selective_scan_pallas, sharded_selective_scan
from kernels.pallas.plan import (
    GPU_BACKEND_ENV,
    backend_for_platform,
    is_hopper_or_newer,
    make_plan,
)
from kernels.pallas.selective_scan import scan_stacked
from nanodna.ops.scan import (
    ARG_NAMES,
    bidirectional_scan_ref,
    random_scan_inputs,
    selective_scan,
    selective_scan_bidirectional,
    selective_scan_ref,
)

ARGS = ARG_NAMES
TOL = {jnp.float32: dict(rtol=6e-4, atol=2e-3), jnp.bfloat16: dict(rtol=3e-2, atol=5e-2)}


def make_inputs(seed, Bz, L, Dc, N, dtype=jnp.float32, D=True, z=True, bias=True):
    """The shared factory's inputs for one seed; D / z / bias False leave those arguments out."""
    key = jax.random.key(seed)
    return random_scan_inputs(key, Bz, L, Dc, N, dtype, skip=D, gate=z, bias=bias)


def assert_close(got, want, dtype, what):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all(), f"{what}: non-finite values (an unwritten element?)"
    np.testing.assert_allclose(got, want, err_msg=what, **TOL[dtype])


def check_against_ref(x, dtype, softplus, reverse, seed=0, impl=selective_scan_pallas, **kw):
    """Output and the VJP of every present input, for one random cotangent."""
    names = [k for k in ARGS if x[k] is not None]
    flags = dict(delta_softplus=softplus, reverse=reverse)
    primals = [x[k] for k in names]
    ct = jax.random.normal(jax.random.key(seed + 1), x["u"].shape).astype(x["u"].dtype)

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_vjp(fn, primals, ct):  # one compile per implementation, not one per op
        y, vjp = jax.vjp(lambda *a: fn(**dict(zip(names, a)), **flags), *primals)
        return y, vjp(ct)

    y, grads = value_and_vjp(functools.partial(impl, **kw), primals, ct)
    y_ref, grads_ref = value_and_vjp(selective_scan_ref, primals, ct)
    assert_close(y, y_ref, dtype, "y")
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_close(g, g_ref, dtype, f"d{name}")


# Both dtypes meet both directions here and again in the bidirectional tests (kept few: each
# case costs two XLA compiles of an interpreted kernel).
@pytest.mark.parametrize("dtype, reverse", [(jnp.float32, False), (jnp.bfloat16, True)])
def test_all_options_odd_sizes(dtype, reverse):
    # L=37 with chunk 8 and D=10 with tiles of 4: both axes need padding; N=5 is odd.
    x = make_inputs(11 + reverse, 2, 37, 10, 5, dtype)
    check_against_ref(x, dtype, softplus=True, reverse=reverse, chunk=8, block_d=4)


@pytest.mark.parametrize(
    "shape, chunk, options",
    [
        ((1, 1, 3, 1), None, dict(D=False, z=False, bias=False)),  # L=1, N=1, no extras
        ((2, 16, 8, 16), 16, dict(D=True, z=False, bias=True)),  # exact multiples, one chunk
    ],
)
def test_tiny_and_optional_arguments(shape, chunk, options):
    x = make_inputs(sum(shape), *shape, **options)
    check_against_ref(x, jnp.float32, softplus=False, reverse=False, chunk=chunk)


def test_tpu_layout_writes_every_element():
    # The TPU interpreter fills every buffer with NaN first: a finite result means every output,
    # saved state and partial sum was written before it was read. (Slow simulator: tiny grid.)
    x = make_inputs(21, 1, 13, 6, 3)
    check_against_ref(x, jnp.float32, softplus=True, reverse=True, chunk=8,
                      backend=Backend("mosaic_tpu", interpret=True))  # fmt: skip


@pytest.mark.parametrize("bwd_in_registers", [False, True])
def test_gpu_layout_in_interpreter(bwd_in_registers):
    # The Triton program shape: all chunks in one program, N padded to 8, and the backward's
    # chunk states either in a workspace or (unrolled) in registers. The reverse direction of
    # this layout is covered by the bidirectional tests.
    x = make_inputs(31 + bwd_in_registers, 2, 20, 8, 5)

    def gpu_layout(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        plan = make_plan(n_dir=1, reverse=reverse, L=20, D=8, softplus=delta_softplus,
                         has_D=True, has_z=True, has_bias=True, chunk=4, block_d=4,
                         backend=Backend("triton", interpret=True),
                         bwd_in_registers=bwd_in_registers)  # fmt: skip
        one = lambda x: x[None]  # noqa: E731
        return scan_stacked(plan, *map(one, (u, delta, A, B, C, D)), z, one(delta_bias))

    check_against_ref(x, jnp.float32, softplus=True, reverse=False, impl=gpu_layout)


@pytest.mark.slow  # about a minute in JAX's GPU interpreter
def test_mosaic_gpu_program_in_interpreter():
    # The Hopper program (mosaic_gpu.py) in JAX's GPU interpreter, which fills fresh buffers
    # with NaN and simulates TMA copies and barriers: L=40 is 3 chunks of 16 with padding,
    # D=130 two 128-channel tiles (one mostly padding), N=5 padded to 8, reverse direction.
    x = make_inputs(51, 2, 40, 130, 5)
    check_against_ref(x, jnp.float32, softplus=True, reverse=True,
                      backend=Backend("mosaic_gpu", interpret=True))  # fmt: skip


def test_mosaic_gpu_rejects_what_it_cannot_hold():
    x = make_inputs(52, 1, 64, 8, 64)
    with pytest.raises(ValueError, match="shared memory"):  # chunk 32 at N=64: > 220 KiB
        selective_scan_pallas(**x, chunk=32, backend=Backend("mosaic_gpu", interpret=True))
    with pytest.raises(ValueError, match="block_d must be 128"):
        selective_scan_pallas(**x, block_d=64, backend=Backend("mosaic_gpu", interpret=True))


def test_gpu_backend_choice(monkeypatch):
    assert backend_for_platform("cpu") == Backend("interpreter", interpret=True)
    assert backend_for_platform("tpu") == Backend("mosaic_tpu")
    monkeypatch.setenv(GPU_BACKEND_ENV, "triton")
    assert backend_for_platform("gpu") == Backend("triton")
    monkeypatch.setenv(GPU_BACKEND_ENV, "mosaic_gpu")
    assert backend_for_platform("gpu") == Backend("mosaic_gpu")
    monkeypatch.setenv(GPU_BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=GPU_BACKEND_ENV):
        backend_for_platform("gpu")
    monkeypatch.delenv(GPU_BACKEND_ENV)  # here (CPU process): not Hopper, so Triton
    want = Backend("mosaic_gpu" if is_hopper_or_newer() else "triton")
    assert backend_for_platform("gpu") == want


def test_backend_names_round_trip_and_bad_ones_fail():
    names = ["interpreter", "triton", "triton_interpret", "mosaic_tpu", "mosaic_tpu_interpret",
             "mosaic_gpu", "mosaic_gpu_interpret"]  # fmt: skip
    assert [Backend.named(n).name for n in names] == names
    assert Backend.named("mosaic_gpu_interpret") == Backend("mosaic_gpu", interpret=True)
    with pytest.raises(ValueError, match="unknown Pallas backend"):
        Backend.named("cuda")
    with pytest.raises(ValueError, match="only runs with interpret=True"):
        Backend("interpreter")


@pytest.mark.parametrize(
    "backend, platform, registers",
    [("triton", "cuda", False), ("triton", "cuda", True), ("mosaic_tpu", "tpu", False),
     ("mosaic_gpu", "cuda", False)],
)
def test_lowers_for_gpu_and_tpu(backend, platform, registers):
    """Forward and backward lower to Triton / Mosaic without a device (catches unsupported ops)."""
    x = make_inputs(41, 2, 64, 64, 16, jnp.bfloat16)
    plan = make_plan(n_dir=1, reverse=True, L=64, D=64, softplus=True, has_D=True, has_z=True,
                     has_bias=True, chunk=16 if registers else None, block_d=None,
                     backend=Backend(backend), bwd_in_registers=registers)  # fmt: skip

    def loss(x):
        one = {k: v if k == "z" else v[None] for k, v in x.items()}
        y = scan_stacked(plan, *(one[k] for k in ARGS))
        return y.astype(jnp.float32).sum()

    text = jax.jit(jax.grad(loss)).trace(x).lower(lowering_platforms=(platform,)).as_text()
    assert text.count("selective_scan_") >= 2  # both kernels made it into the module


def test_resource_report_finds_both_triton_modules():
    # The developer tool reads a JAX internal; this notices when that moves.
    from kernels.pallas.resource_report import triton_modules

    modules = triton_modules(L=16, D=32, N=4, block_d=32, chunk=8)
    assert set(modules) == {"forward", "backward"}
    assert all("tt.func" in text for text in modules.values())


def test_sharded_matches_unsharded():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    x = make_inputs(51, 8, 12, 6, 4)
    flags = dict(delta_softplus=True, reverse=True, chunk=4)
    sharded = functools.partial(sharded_selective_scan, mesh, "data")

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_grad(fn, x):
        return jax.value_and_grad(lambda x: jnp.sum(jnp.sin(fn(**x, **flags))))(x)

    loss, grads = value_and_grad(sharded, x)
    loss_one, grads_one = value_and_grad(selective_scan_pallas, x)
    np.testing.assert_allclose(loss, loss_one, rtol=1e-5)
    for k in ARGS:  # parameter gradients must be summed over the shards
        np.testing.assert_allclose(grads[k], grads_one[k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_sharded_mosaic_gpu_lowers_for_cuda():
    # The Hopper program under shard_map, forward and backward, lowered without a device. Its
    # sharded numerics are test_sharded_matches_unsharded's (same wrapper, portable program):
    # JAX's GPU interpreter is single-device and hangs under a multi-device shard_map.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    x = make_inputs(53, 8, 12, 6, 4)
    sharded = functools.partial(sharded_selective_scan, mesh, "data", delta_softplus=True,
                                backend=Backend("mosaic_gpu"))  # fmt: skip
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(sharded(**x)))))
    text = grad.trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu_v2") == 2 and "selective_scan_bwd_mgpu" in text


def test_bad_shapes_fail_with_one_line():
    x = make_inputs(61, 2, 8, 4, 3)
    x["B"] = x["B"][:, :, :2]
    # jaxtyping's checker (on in tests) or the kernel's own check, whichever sees it first.
    with pytest.raises((ValueError, TypeCheckError)):
        selective_scan_pallas(**x)
    with pytest.raises(ValueError, match="chunk and block_d must be positive"):
        selective_scan_pallas(**make_inputs(62, 2, 8, 4, 3), chunk=-1)
    with pytest.raises((ValueError, TypeCheckError)):
        selective_scan_pallas(**make_inputs(62, 2, 8, 4, 3), backend="cuda")
    kw = dict(n_dir=1, reverse=False, L=8, D=4, softplus=True, has_D=True, has_z=True,
              has_bias=True)  # fmt: skip
    # The type checker (on in tests) or make_plan's own check: either names the argument.
    with pytest.raises((ValueError, TypeCheckError), match="backend"):
        make_plan(**kw, backend="cuda")
    with pytest.raises((ValueError, TypeCheckError), match="backward"):
        make_plan(**kw, backward="xla")


def test_reference_backward_gives_the_kernel_backward_gradients():
    # backward="reference": the kernel forward, gradients from autodiff of a lax.scan
    # (kernels/pallas/reference_backward.py). Both backwards must give the same gradients, and
    # both must match nanodna's reference (check_against_ref).
    x = make_inputs(63, 2, 13, 6, 3)
    check_against_ref(x, jnp.float32, softplus=True, reverse=True, chunk=4,
                      backward="reference")  # fmt: skip
    grad = lambda backward: jax.jit(jax.grad(  # noqa: E731
        lambda x: jnp.sum(jnp.sin(selective_scan_pallas(**x, delta_softplus=True, chunk=4,
                                                        backward=backward)))))  # fmt: skip
    g_kernel, g_ref = grad("kernel")(x), grad("reference")(x)
    for k in ARGS:
        np.testing.assert_allclose(g_kernel[k], g_ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def sharded_over(mesh, x, batch_axes):
    """x's arrays placed on mesh: axis batch_axes[name] split over "data", others replicated."""
    P = jax.sharding.PartitionSpec
    spec = lambda k: P(*[None] * batch_axes[k], "data") if k in batch_axes else P()  # noqa: E731
    return {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, spec(k))) for k, v in x.items()}


def test_ops_runs_the_kernel_under_shard_map_on_a_mesh():
    # nanodna.ops.selective_scan(impl="pallas") with inputs split over 8 (simulated) devices:
    # the kernel runs per device under shard_map, and outputs and gradients match the reference.
    assert len(jax.devices()) == 8  # tests/conftest.py forces 8 host devices
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    x = make_inputs(64, 8, 10, 6, 3)
    loss = lambda scan: lambda x: jnp.sum(jnp.sin(scan(**x, delta_softplus=True)))  # noqa: E731
    pallas = functools.partial(selective_scan, impl="pallas", chunk=4)
    on_mesh = sharded_over(mesh, x, dict(u=0, delta=0, B=0, C=0, z=0))
    assert "shard_map" in str(jax.make_jaxpr(loss(pallas))(on_mesh))
    assert "shard_map" not in str(jax.make_jaxpr(loss(pallas))(x))  # one device: plain kernel
    value, grads = jax.jit(jax.value_and_grad(loss(pallas)))(on_mesh)
    value_ref, grads_ref = jax.jit(jax.value_and_grad(loss(selective_scan_ref)))(x)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    for k in ARGS:
        np.testing.assert_allclose(grads[k], grads_ref[k], rtol=1e-4, atol=1e-4, err_msg=k)
    # The fused bidirectional launch too (batch on axis 1 of the stacked inputs).
    x2 = random_scan_inputs(jax.random.key(65), 8, 10, 6, 3, S=2)
    on_mesh2 = sharded_over(mesh, x2, dict(u=1, delta=1, B=1, C=1, z=0))
    fused = jax.jit(lambda x: selective_scan_bidirectional(**x, delta_softplus=True, impl="pallas"))
    assert "shard_map" in str(jax.make_jaxpr(fused)(on_mesh2))
    np.testing.assert_allclose(fused(on_mesh2), bidirectional_scan_ref(**x2, delta_softplus=True),
                               **TOL[jnp.float32])  # fmt: skip


@pytest.mark.slow  # the whole GPU bench in smoke mode, about a minute
def test_bench_smoke(tmp_path, capsys):
    # In-process: the tiny benchmark reuses this session's JAX instead of starting another.
    results = bench_pallas.main(["--smoke", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").exists() and (tmp_path / "log.txt").exists()
    parity = results["shapes"][0]["parity"]  # the portable program and the Hopper one
    assert set(parity) == {"pallas_fused", "pallas_fused[mosaic_gpu_interpret]"}
    for errs in parity.values():
        assert max(errs.values()) < 1e-4, parity
    assert "parity" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", ["triton", "mosaic_gpu"])
def test_gpu_kernel(dtype, reverse, backend):
    if backend == "mosaic_gpu" and not is_hopper_or_newer():
        pytest.skip("Mosaic GPU needs Hopper (sm_90) or newer")
    x = make_inputs(71, 4, 300, 200, 16, dtype)
    check_against_ref(x, dtype, softplus=True, reverse=reverse, backend=Backend(backend))
