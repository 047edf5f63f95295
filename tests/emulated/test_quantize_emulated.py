"""`run.sh quantize --emulate`: the fidelity check repeated on emulated CPUs, each in the report."""

from __future__ import annotations

import json
import platform

import pytest

from onnx_classifier.quantize import main

from ..test_quantize import conv_model, write_photos

pytestmark = pytest.mark.emulated


def test_quantize_reports_the_fidelity_on_each_emulated_cpu(capsys, tmp_path, arm64_root, installed):
    photos = write_photos(tmp_path / "photos", 25)
    model = conv_model(tmp_path / "conv.onnx")
    families = ["cortex-a72", "cortex-a76"] + (["Haswell"] if platform.machine().lower() in ("x86_64", "amd64") else [])
    argv = [str(model), "--calibration", str(photos), "--format", "json", "--emulate", ",".join(families), "--arm64-root", str(arm64_root)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["emulated"]) == families
    for name, emulated in report["emulated"].items():
        assert emulated["int8_kernels"].startswith("ARM64" if name.startswith("cortex") else "x86-64 AVX2 without VNNI")
        # the model is saturation-free, so every family sums what this machine sums
        assert emulated["top1_agreeing"] == report["top1_agreeing"]
        assert emulated["confidence_difference"]["max"] == pytest.approx(report["confidence_difference"]["max"], abs=1e-3)
    assert main([str(model), "--calibration", str(photos), "--out", str(tmp_path / "again.onnx"), "--emulate", "cortex-a72", "--arm64-root", str(arm64_root)]) == 0
    table = capsys.readouterr().out
    assert "\nemulated cortex-a72 (ARM64 without dot product (Raspberry Pi 4): exact int32 sums): top-1 agreement " in table
    assert "confidence difference max " in table.split("emulated cortex-a72")[1]


def test_an_arm_cpu_without_a_root_is_an_error_that_says_what_is_missing(capsys, tmp_path):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an ARM host emulates ARM CPUs with its own Python")
    photos = write_photos(tmp_path / "photos", 25)
    status = main([str(conv_model(tmp_path / "conv.onnx")), "--calibration", str(photos), "--emulate", "cortex-a72"])
    err = capsys.readouterr().err
    assert status == 1 and "cortex-a72 (aarch64) cannot be emulated on this x86_64 machine without an arm64 root (--arm64-root)" in err
    assert (tmp_path / "conv_int8.onnx").exists()  # the model is made; only the check on other CPUs could not run
