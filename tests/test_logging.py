"""metrics.jsonl writing, truncation on resume, TensorBoard files, and MFU."""

import json
import os

import numpy as np
import pytest

from nanodna.training.logging import MetricsLogger, mfu, peak_flops_per_device


def test_log_rows_truncate_and_tensorboard(tmp_path):
    logger = MetricsLogger(str(tmp_path), tensorboard=True)
    losses = np.random.default_rng().random(5)
    for step, loss in enumerate(losses, start=1):
        logger.log(step, {"loss": np.float32(loss), "lr": 1e-3})
    logger.log(5, {"eval/val_loss": float("nan")})
    logger.truncate_after(3)
    logger.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in rows], losses[:3], rtol=1e-6)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))


def test_non_finite_values_stay_valid_json(tmp_path):
    logger = MetricsLogger(str(tmp_path), tensorboard=False)
    logger.log(1, {"eval/val_loss": float("inf")})
    assert json.loads(open(tmp_path / "metrics.jsonl").read())["eval/val_loss"] == "inf"
    assert not os.path.exists(tmp_path / "tb")


def test_peak_flops_and_mfu():
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_device("NVIDIA H200") == 989e12
    assert peak_flops_per_device("TPU v4") == 275e12
    assert peak_flops_per_device("cpu") is None
    assert peak_flops_per_device("cpu", override=1e12) == 1e12
    rng = np.random.default_rng()
    fpt, tps = rng.uniform(1e6, 1e8), rng.uniform(1e3, 1e5)
    assert mfu(fpt, tps, 2, 1e15) == pytest.approx(fpt * tps / 2e15)
    assert mfu(fpt, tps, 2, None) is None
