"""`run.sh quantize`: int8 models made with onnxruntime's tools through the model's own preprocessing,
written beside the model with a sidecar, never over a file, and compared on held-out images."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnx_classifier.onnx_structure import load_structure
from onnx_classifier.paths import BUNDLED_MODEL
from onnx_classifier.cpu import describe_cpu, int8_kernels
from onnx_classifier.pair_safe import PAIR_LIMIT, largest_pair, same_sign_pair_sums
from onnx_classifier.quantize import Recipe, float_ends, load_classifier, main, quantize_model

from . import onnx_models

CALIBRATION_PHOTOS = Path(__file__).resolve().parents[1] / "models" / "calibration"
HF_VIT = Path(__file__).resolve().parent / "data" / "hf" / "vit_single_label"
CONV_LABELS = ["a", "b", "c", "d", "e"]


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def write_photos(folder: Path, count: int, size=(160, 120), seed=0) -> Path:
    """`count` small JPEG crops of the calibration photos."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(CALIBRATION_PHOTOS.glob("*.jpg"))]
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = photo.width * rng.uniform(0.5, 1.0), photo.height * rng.uniform(0.5, 1.0)
        left, top = rng.uniform(0, photo.width - width), rng.uniform(0, photo.height - height)
        photo.resize(size, Image.Resampling.BILINEAR, box=(left, top, left + width, top + height)).save(
            folder / f"{index:03d}.jpg", quality=90
        )
    return folder


def conv_model(path: Path, sidecar=None) -> Path:
    """conv, relu, conv, relu, conv, relu, average pool, flatten, gemm: a tiny CNN classifier."""
    rng = np.random.default_rng(1)
    channels = [3, 8, 8, 8]
    nodes, initializers, x = [], [], "image"
    for layer in range(3):
        weight = rng.normal(0, 0.5, (channels[layer + 1], channels[layer], 3, 3)).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{layer}"), numpy_helper.from_array(np.full(channels[layer + 1], 0.1, np.float32), f"b{layer}")]
        nodes += [
            helper.make_node("Conv", [x, f"w{layer}", f"b{layer}"], [f"conv{layer}"], pads=[1, 1, 1, 1], name=f"conv{layer}"),
            helper.make_node("Relu", [f"conv{layer}"], [f"relu{layer}"], name=f"relu{layer}"),
        ]
        x = f"relu{layer}"
    initializers += [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, len(CONV_LABELS))).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(len(CONV_LABELS), np.float32), "fc_b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], name="classifier"),
    ]
    graph = helper.make_graph(
        nodes, "conv_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CONV_LABELS)])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    path.with_suffix(".json").write_text(json.dumps(sidecar if sidecar is not None else {"labels": CONV_LABELS}))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("calibration"), 25)


def quantized_ops(path: Path) -> set[str]:
    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and any(i in dequantized for i in n.input[1:2])}


def test_the_bundled_model_is_quantized_with_its_recipe_and_compared_on_held_out_images(capsys, tmp_path, photos):
    out = tmp_path / "lite0_int8.onnx"
    status, stdout, err = run(capsys, BUNDLED_MODEL, "--calibration", photos, "--out", out, "--format", "json")
    assert status == 0, err
    report = json.loads(stdout)
    assert (report["calibration_images"], report["held_out_images"]) == (20, 5)
    assert report["int8_model"] == str(out) and report["sidecar"] == str(out.with_suffix(".json"))
    assert 0 <= report["top1_agreeing"] <= 5 and report["top1_agreement"] == report["top1_agreeing"] / 5
    assert 0 <= report["confidence_difference"]["p95"] <= report["confidence_difference"]["max"] <= 1
    assert report["model_ms"]["float"] > 0 and report["model_ms"]["int8"] > 0
    assert report["kept_float"] == ["stem/Conv", "classifier/Gemm", "head/Flatten", "head/Pool"]
    # The int8 model loads by its path alone, with the float model's resolved recipe and labels.
    reference, int8 = load_classifier({}), load_classifier({"model_path": str(out)})
    assert int8.model.preprocessing == reference.model.preprocessing
    assert int8.labels == reference.labels and int8.model.head == reference.model.head
    labels_path = json.loads(out.with_suffix(".json").read_text())["labels_path"]
    assert (out.parent / labels_path).resolve() == BUNDLED_MODEL.with_name("efficientnet_lite0.labels.txt")
    quantized = quantized_ops(out)
    assert len(quantized) >= 40 and "stem/Conv" not in quantized and "classifier/Gemm" not in quantized


def test_the_report_is_a_table_by_default_and_the_sidecar_carries_the_attributes(capsys, tmp_path, photos):
    model = conv_model(tmp_path / "conv.onnx", sidecar={})
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CONV_LABELS))
    attributes = {"labels_path": str(labels), "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize": "letterbox"}
    status, stdout, err = run(capsys, model, "--calibration", photos, "--attributes", json.dumps(attributes))
    assert status == 0, err
    written = tmp_path / "conv_int8.onnx"
    assert f"wrote {written} and {written.with_suffix('.json')}" in stdout
    assert "top-1 agreement" in stdout and "/5 (" in stdout and "95th percentile" in stdout
    assert re.search(r"model alone, median ms +[0-9.]+ +[0-9.]+ \([0-9.]+x (faster|slower)\)", stdout)
    description = json.loads(written.with_suffix(".json").read_text())
    assert description["labels_path"] == "labels.txt"
    assert (description["mean"], description["std"], description["resize"]) == ([0.5] * 3, [0.25] * 3, "letterbox")
    reference = load_classifier({"model_path": str(model), **attributes})
    int8 = load_classifier({"model_path": str(written)})
    assert int8.model.preprocessing == reference.model.preprocessing and int8.labels == tuple(CONV_LABELS)
    assert quantized_ops(written) == {"conv1", "conv2"}  # the first layer and the classifier stay float


def test_a_hugging_face_export_folder_is_quantized_with_its_own_processor_recipe(capsys, tmp_path, photos):
    export = shutil.copytree(HF_VIT, tmp_path / "vit")
    status, stdout, err = run(capsys, export, "--calibration", photos, "--format", "json")
    assert status == 0, err
    written = export / "model_int8.onnx"
    assert json.loads(stdout)["int8_model"] == str(written)
    reference, int8 = load_classifier({"model_path": str(export)}), load_classifier({"model_path": str(written)})
    assert int8.model.preprocessing == reference.model.preprocessing
    assert int8.labels == reference.labels and int8.model.head == reference.model.head
    assert quantized_ops(written)


def test_nothing_is_overwritten_the_default_name_gets_a_suffix_and_a_taken_out_is_an_error(capsys, tmp_path, photos):
    model = conv_model(tmp_path / "conv.onnx")
    (tmp_path / "conv_int8.json").write_text("mine")
    status, stdout, err = run(capsys, model, "--calibration", photos, "--format", "json")
    assert status == 0, err
    assert json.loads(stdout)["int8_model"] == str(tmp_path / "conv_int8-1.onnx")
    assert (tmp_path / "conv_int8.json").read_text() == "mine" and not (tmp_path / "conv_int8.onnx").exists()
    status, stdout, err = run(capsys, model, "--calibration", photos, "--format", "json")
    assert json.loads(stdout)["int8_model"] == str(tmp_path / "conv_int8-2.onnx")
    taken = tmp_path / "conv_int8-1.onnx"
    before = taken.read_bytes()
    status, stdout, err = run(capsys, model, "--calibration", photos, "--out", taken)
    assert status == 2 and stdout == ""
    assert f"{taken} already exists" in err and taken.read_bytes() == before


def test_every_calibration_image_counts_in_the_ranges(capsys, tmp_path):
    """The range of the first quantized activation is the largest value over all calibration images
    (MinMax), however many there are: one bright image among many dark ones decides it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(40):
        level = 250 if index == 2 else 20 + index
        Image.new("RGB", (40, 40), (level, level // 2, 255 - level)).save(folder / f"{index:03d}.png")
    model = conv_model(tmp_path / "conv.onnx")
    status, _, err = run(capsys, model, "--calibration", folder, "--format", "json")
    assert status == 0, err
    calibration = [p for i, p in enumerate(sorted(folder.iterdir())) if i % 5 != 4]
    # relu0 (conv0's activation, which feeds the first quantized layer) of every calibration image
    graph = onnx.load(str(model))
    graph.graph.output.append(helper.make_tensor_value_info("relu0", TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString())
    reference = load_classifier({"model_path": str(model)})
    largest = max(float(session.run(["relu0"], {"image": reference.preprocess(p.read_bytes())})[0].max()) for p in calibration)
    int8 = onnx.load(str(tmp_path / "conv_int8.onnx")).graph
    scale = next(numpy_helper.to_array(t) for t in int8.initializer if t.name == "relu0_scale")
    assert float(scale) == pytest.approx(largest / 255, rel=1e-5)


def test_too_few_calibration_images_say_how_many_are_needed(capsys, tmp_path):
    folder = write_photos(tmp_path / "few", 19)
    status, _, err = run(capsys, BUNDLED_MODEL, "--calibration", folder)
    assert status == 2
    assert "19 images" in err and "at least 20 are needed (16 to calibrate, 4 held out" in err


def test_an_unreadable_calibration_image_is_named_and_leaves_no_model_behind(capsys, tmp_path):
    folder = write_photos(tmp_path / "photos", 20)
    (folder / "007.jpg").write_bytes((folder / "007.jpg").read_bytes()[:300])  # truncated
    model = conv_model(tmp_path / "conv.onnx")
    status, stdout, err = run(capsys, model, "--calibration", folder)
    assert status == 1 and stdout == ""
    assert f"calibration image {folder / '007.jpg'}:" in err and "truncated" in err
    assert not list(tmp_path.glob("conv_int8*"))


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda p: onnx_models.build(p, layout="NHWC", input_type=TensorProto.UINT8), "takes uint8 pixels (NHWC): it is already built for 8-bit input and needs no quantization"),
        (lambda p: onnx_models.build(p, input_type=TensorProto.FLOAT16), "takes float16 input; onnxruntime's static quantization needs a float32 model"),
        (lambda p: onnx_models.build(p, quantize_output=(0.01, 0)), "is already quantized (it has QuantizeLinear nodes)"),
    ],
)
def test_models_that_need_or_allow_no_quantization_are_refused_before_any_work(capsys, tmp_path, photos, build, fragment):
    model = build(tmp_path / "model.onnx")
    status, stdout, err = run(capsys, model, "--calibration", photos)
    assert status == 2 and stdout == ""
    assert fragment in err and not list(tmp_path.glob("model_int8*"))


def test_a_model_with_nothing_but_a_first_layer_and_a_classifier_cannot_be_quantized(capsys, tmp_path, photos):
    model = onnx_models.build(tmp_path / "model.onnx")
    status, _, err = run(capsys, model, "--calibration", photos)
    assert status == 1
    assert "has nothing to quantize" in err and not list(tmp_path.glob("model_int8*"))


def test_bad_model_folder_and_attributes_are_usage_errors(capsys, tmp_path, photos):
    status, _, err = run(capsys, tmp_path / "missing.onnx", "--calibration", photos)
    assert status == 2 and "no such file" in err
    status, _, err = run(capsys, BUNDLED_MODEL, "--calibration", tmp_path / "nowhere")
    assert status == 2 and f"--calibration {tmp_path / 'nowhere'}: no such folder" in err
    status, _, err = run(capsys, BUNDLED_MODEL, "--calibration", photos, "--attributes", '{"head": "max"}')
    assert status == 2 and "attribute 'head' must be one of" in err
    status, _, err = run(capsys, BUNDLED_MODEL, "--calibration", photos, "--out", tmp_path / "x.bin")
    assert status == 2 and "must end in .onnx" in err


def test_progress_goes_to_a_terminal_stderr_only(capsys, monkeypatch, tmp_path, photos):
    model = conv_model(tmp_path / "conv.onnx")
    status, stdout, err = run(capsys, model, "--calibration", photos, "--format", "json")
    assert status == 0 and "calibrating" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    status, stdout, err = run(capsys, model, "--calibration", photos, "--format", "json")
    assert status == 0 and "calibrating" in err and "\r" in err
    json.loads(stdout)  # stdout stays clean


def test_float_ends_keep_the_first_layer_and_the_classifier_with_its_pooling(tmp_path):
    graph = onnx.load(str(conv_model(tmp_path / "conv.onnx"))).graph
    assert float_ends(graph) == ("conv0", "classifier", "flatten", "pool")
    assert set(float_ends(load_structure(BUNDLED_MODEL).graph)) == {"stem/Conv", "classifier/Gemm", "head/Flatten", "head/Pool"}


# The recipe's parts: ranges that no CPU saturates, and bias correction


def test_pair_sums_count_same_sign_neighbours_only():
    rows = np.array([[100, 90, -5, 3], [100, -90, 50, 60], [7, 0, 0, -7], [1, 2, 3, 0]], np.float64)
    # odd lengths pair the last value with nothing
    assert same_sign_pair_sums(rows).tolist() == [190, 110, 7, 3]
    assert same_sign_pair_sums(np.array([[5, 5, 9]], np.float64)).tolist() == [10]


def quantize_conv(tmp_path: Path, name: str, photos: Path, **recipe) -> Path:
    model = conv_model(tmp_path / f"{name}.onnx")
    classifier = load_classifier({"model_path": str(model)})
    images = sorted(photos.iterdir())
    out = tmp_path / f"{name}_int8.onnx"
    quantize_model(classifier, images, lambda p: classifier.preprocess(p.read_bytes()), out, Recipe(**recipe))
    return out


def test_pair_safe_ranges_leave_no_pair_that_x86_without_vnni_would_saturate(tmp_path, photos):
    unsafe = quantize_conv(tmp_path, "unsafe", photos, pair_safe_weights=False)
    safe = quantize_conv(tmp_path, "safe", photos)
    assert largest_pair(onnx.load(str(unsafe))) > PAIR_LIMIT >= largest_pair(onnx.load(str(safe)))
    # per channel: a channel whose largest weight has small neighbours keeps its full range
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(safe)).graph.initializer}
    assert np.abs(weights["w1_quantized"]).max() == 127
    per_tensor = quantize_conv(tmp_path, "per_tensor", photos, per_channel=False)
    assert largest_pair(onnx.load(str(per_tensor))) <= PAIR_LIMIT


def test_bias_correction_takes_back_the_mean_error_of_int8_weights(tmp_path, photos):
    images = sorted(photos.iterdir())
    reference = load_classifier({"model_path": str(conv_model(tmp_path / "float.onnx"))})
    expected = np.stack([reference.scores(reference.preprocess(p.read_bytes())) for p in images])

    def mean_error(**recipe) -> float:
        model = load_classifier({"model_path": str(quantize_conv(tmp_path, "_".join(map(str, recipe.values())) or "default", photos, **recipe))})
        scores = np.stack([model.scores(model.preprocess(p.read_bytes())) for p in images])
        return float(np.abs((scores - expected).mean(axis=0)).max())

    corrected, uncorrected = mean_error(), mean_error(bias_correction=False)
    assert corrected < 0.5 * uncorrected, (corrected, uncorrected)


def test_the_report_names_the_cpu_it_measured_on(capsys, tmp_path, photos):
    model = conv_model(tmp_path / "conv.onnx")
    status, stdout, err = run(capsys, model, "--calibration", photos, "--format", "json")
    assert status == 0, err
    report = json.loads(stdout)
    assert report["cpu"] == describe_cpu() and "emulated" not in report
    assert report["recipe"]["bias_correction"] is True and "adjacent same-sign pairs" in report["recipe"]["weights"]
    status, stdout, _ = run(capsys, conv_model(tmp_path / "again.onnx"), "--calibration", photos)
    assert f"measured on {describe_cpu()['model']} ({describe_cpu()['architecture']}; int8 kernels: " in stdout


def test_emulated_cpus_must_be_ones_it_knows(capsys, tmp_path, photos):
    with pytest.raises(SystemExit) as exited:
        main([str(conv_model(tmp_path / "conv.onnx")), "--calibration", str(photos), "--emulate", "Haswell,pentium"])
    assert exited.value.code == 2
    assert "argument --emulate: unknown CPU 'pentium'; choose from Haswell, cortex-a72, cortex-a76" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["x86", "arm64"])
def test_int8_kernel_families_are_named_for_each_cpu(family):
    # Each family explicitly, whatever this machine is.
    if family == "x86":
        assert int8_kernels("x86_64", {"avx2", "avx512_vnni", "amx_int8"}).startswith("x86-64 with AMX")
        assert int8_kernels("x86_64", {"avx2", "avx_vnni"}).endswith("exact int32 sums")
        assert "saturating int16" in int8_kernels("x86_64", {"avx2", "avx512bw"})
    else:
        assert int8_kernels("aarch64", set()).startswith("ARM64 without dot product")
        assert int8_kernels("aarch64", {"asimddp"}).startswith("ARM64 with dot product")
        assert int8_kernels("aarch64", {"asimddp", "i8mm"}).startswith("ARM64 with i8mm")
