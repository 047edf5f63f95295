"""`run.sh classify`: inputs, output formats, annotated and sorted copies, --info, and exit statuses."""

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto
from PIL import Image

from onnx_classifier import cli
from onnx_classifier.decode import VIAM_RGBA_HEADER
from onnx_classifier.head import softmax
from onnx_classifier.paths import BUNDLED_MODEL

from . import onnx_models
from .conftest import DATA

# The small test model's classes; folder names made from them must stay inside the sort folder.
SMALL_LABELS = ["red/ish", "green", "blue: deep", "..", "plain"]


def run(capsys, *argv):
    """cli.main's exit status, stdout and stderr."""
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def photos(tmp_path) -> Path:
    """photos/coffee.png, photos/trip/rocket.jpg, a text file and a hidden non-image the folder search must skip."""
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    shutil.copy(DATA / "coffee.png", folder / "coffee.png")
    shutil.copy(DATA / "rocket.jpg", folder / "trip" / "rocket.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "._coffee.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    return folder


@pytest.fixture
def small_model(tmp_path) -> Path:
    """A 5-class model whose scores are known in numpy, with labels that are unsafe as folder names."""
    return onnx_models.build(tmp_path / "small.onnx", sidecar={"labels": SMALL_LABELS})


def halves(left, right, size=(40, 20)) -> Image.Image:
    image = Image.new("RGB", size, left)
    image.paste(Image.new("RGB", (size[0] // 2, size[1]), right), (size[0] // 2, 0))
    return image


def small_model_confidences(rgb) -> np.ndarray:
    return softmax(onnx_models.scores_for(np.asarray(rgb) / 255.0))


# Inputs


def test_one_image_prints_label_lines_as_before(capsys):
    status, out, err = run(capsys, "-n", 3, DATA / "coffee.png")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0] == "espresso: 0.84"
    assert all(": " in line for line in lines)
    assert err == ""  # no summary and no progress for a single image


def test_folders_are_searched_recursively_for_images_in_sorted_order(capsys, photos):
    status, out, err = run(capsys, "--format", "json", "-n", 1, photos)
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [str(photos / "coffee.png"), str(photos / "trip" / "rocket.jpg")]
    assert [r["classifications"][0]["label"] for r in records] == ["espresso", "missile"]
    assert "2 images: 2 classified, 0 errors" in err


def test_globs_are_expanded_and_each_file_is_classified_once(capsys, photos):
    pattern = str(photos / "**" / "*.jpg")
    status, out, _ = run(capsys, "--format", "json", "-n", 1, pattern, photos / "trip", photos / "coffee.png")
    assert status == 0
    paths = [json.loads(line)["path"] for line in out.splitlines()]
    assert paths == [str(photos / "trip" / "rocket.jpg"), str(photos / "coffee.png")]


def test_a_file_named_on_the_command_line_is_sniffed_whatever_its_name(capsys, tmp_path):
    misnamed = tmp_path / "coffee.dat"
    shutil.copy(DATA / "coffee.png", misnamed)
    status, out, _ = run(capsys, "-n", 1, misnamed)
    assert status == 0 and out.startswith("espresso: ")


def test_unreadable_images_and_missing_paths_are_reported_and_skipped(capsys, photos, tmp_path):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (photos / "empty.png").write_bytes(b"")
    missing = tmp_path / "nowhere.jpg"
    status, out, err = run(capsys, "-n", 1, photos, missing, tmp_path / "none-*.png")
    assert status == 1
    assert out.splitlines() == [
        f"{photos / 'coffee.png'}:", "espresso: 0.84",
        f"{photos / 'trip' / 'rocket.jpg'}:", "missile: 0.34",
    ]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4
    assert any(str(photos / "broken.jpg") in line and "JPEG" in line for line in errors)
    assert any(str(photos / "empty.png") in line and "empty" in line for line in errors)
    assert any(str(missing) in line and "no such file" in line for line in errors)
    assert any("none-*.png" in line and "no file matches" in line for line in errors)
    assert "4 images: 2 classified, 4 errors" in err


# Formats


def test_json_lines_hold_every_image_with_its_results_or_its_error(capsys, photos):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status, out, err = run(capsys, "--format", "json", "-n", 4, photos)
    assert status == 1
    records = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert set(records) == {"broken.png", "coffee.png", "rocket.jpg"}
    assert "PNG" in records["broken.png"]["error"] and "classifications" not in records["broken.png"]
    coffee = records["coffee.png"]["classifications"]
    assert len(coffee) == 4 and coffee[0]["label"] == "espresso"
    confidences = [c["confidence"] for c in coffee]
    assert confidences == sorted(confidences, reverse=True) and all(0 <= c <= 1 for c in confidences)
    assert "broken.png" in err  # errors are on stderr too, for people watching


def test_csv_has_a_header_and_one_row_per_ranked_label(capsys, photos):
    (photos / "broken.png").write_bytes(b"garbage")
    status, out, _ = run(capsys, "--format", "csv", "-n", 2, "--threshold", 0.3, photos)
    assert status == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "rank", "label", "confidence", "error"]
    by_image = {}
    for row in rows:
        by_image.setdefault(Path(row["path"]).name, []).append(row)
    assert [r["error"] != "" for r in by_image["broken.png"]] == [True]
    assert [(r["rank"], r["label"]) for r in by_image["coffee.png"]] == [("1", "espresso")]  # cup (0.08) is below 0.3
    assert float(by_image["coffee.png"][0]["confidence"]) == pytest.approx(0.84, abs=0.005)
    assert [(r["rank"], r["label"]) for r in by_image["rocket.jpg"]] == [("1", "missile")]


def test_an_image_with_no_label_above_the_threshold_still_has_a_record(capsys):
    status, out, _ = run(capsys, "--threshold", 0.9, DATA / "rocket.jpg")
    assert status == 0 and out == "(no label passes the threshold)\n"
    status, out, _ = run(capsys, "--format", "csv", "--threshold", 0.9, DATA / "rocket.jpg")
    assert status == 0 and out.splitlines() == ["path,rank,label,confidence,error", f"{DATA / 'rocket.jpg'},,,,"]
    status, out, _ = run(capsys, "--format", "json", "--threshold", 0.9, DATA / "rocket.jpg")
    assert status == 0 and json.loads(out) == {"path": str(DATA / "rocket.jpg"), "classifications": []}


def test_progress_goes_to_a_terminal_stderr_only_and_never_to_stdout(capsys, monkeypatch, photos):
    expected = [str(photos / "coffee.png"), str(photos / "trip" / "rocket.jpg")]
    status, out, err = run(capsys, "--format", "json", photos)
    assert status == 0 and [json.loads(line)["path"] for line in out.splitlines()] == expected
    assert "\r" not in err  # stderr is not a terminal here
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    status, out, err = run(capsys, "--format", "json", photos)
    assert status == 0
    assert "\r[" in err and "1/2 rocket.jpg" in err
    assert "\r" not in out and [json.loads(line)["path"] for line in out.splitlines()] == expected


# Configuration: the service's attributes, checked the same way


def test_label_rules_from_a_config_file_apply(capsys, tmp_path):
    config = tmp_path / "attrs.json"
    config.write_text(json.dumps({"allowed_labels": ["cup", "coffee mug"], "label_confidences": {"cup": 0.5}}))
    status, out, _ = run(capsys, "--config", config, DATA / "coffee.png")
    assert status == 0
    assert [line.split(":")[0] for line in out.splitlines()] == ["coffee mug"]  # espresso not allowed, cup below 0.5


def test_flags_override_the_config_file_and_attributes(capsys, tmp_path):
    config = tmp_path / "attrs.json"
    config.write_text(json.dumps({"confidence_threshold": 0.99, "head": "sigmoid"}))
    status, out, _ = run(capsys, "--config", config, "--attributes", '{"head": "auto"}', "--threshold", 0, "-n", 1, DATA / "coffee.png")
    assert status == 0 and out == "espresso: 0.84\n"


def test_model_and_labels_flags_are_relative_to_the_current_folder(capsys, monkeypatch, tmp_path, small_model):
    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(onnx_models.NUM_CLASSES)))
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(image)
    status, out, err = run(capsys, "--model", "small.onnx", "--labels", "names.txt", "--format", "json", "-n", 5, "red.png")
    assert status == 0, err
    (record,) = map(json.loads, out.splitlines())
    expected = small_model_confidences((255, 0, 0))
    assert [c["label"] for c in record["classifications"]] == [f"class {i}" for i in np.argsort(-expected)]
    assert [c["confidence"] for c in record["classifications"]] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)


def test_region_classifies_only_that_part_of_each_image(capsys, tmp_path, small_model):
    image = tmp_path / "red-blue.png"
    halves((255, 0, 0), (0, 0, 255)).save(image)
    tops = {}
    for name, region in {"left": (0, 0, 0.5, 1), "right": (0.5, 0, 1, 1)}.items():
        status, out, _ = run(capsys, "--model", small_model, "--region", *region, "--format", "json", "-n", 1, image)
        assert status == 0
        tops[name] = json.loads(out)["classifications"][0]
    assert tops["left"]["label"] == SMALL_LABELS[int(np.argmax(small_model_confidences((255, 0, 0))))]
    assert tops["right"]["label"] == SMALL_LABELS[int(np.argmax(small_model_confidences((0, 0, 255))))]
    # Not exact: the resampling filter reaches a pixel or so past the region's edge, into the other colour.
    assert tops["left"]["confidence"] == pytest.approx(small_model_confidences((255, 0, 0)).max(), abs=0.01)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--head", "max"], "attribute 'head' must be one of"),
        (["--threshold", "1.5"], "attribute 'confidence_threshold' must be in [0, 1]"),
        (["--region", "0.5", "0", "0.2", "1"], "attribute 'region' must be [x_min, y_min, x_max, y_max]"),
        (["--model", "no-such-model.onnx"], "attribute 'model_path': no such file"),
        (["--attributes", '{"blocked_labels": ["espreso"]}'], "attribute 'blocked_labels': 'espreso' is not a label"),
        (["--attributes", "[1, 2]"], "--attributes must be a JSON object"),
        (["--attributes", "{nope"], "--attributes is not valid JSON"),
        (["--config", "no-such-file.json"], "--config no-such-file.json: No such file"),
    ],
)
def test_configuration_errors_exit_2_with_the_services_message(capsys, argv, fragment):
    status, out, err = run(capsys, *argv, DATA / "coffee.png")
    assert status == 2
    assert out == ""
    assert fragment in err and err.startswith("run.sh classify: error: ")


def test_unknown_attributes_are_warned_about_as_the_service_does(capsys):
    status, out, err = run(capsys, "--attributes", '{"confidence_treshold": 0.5}', "-n", 1, DATA / "coffee.png")
    assert status == 0 and out == "espresso: 0.84\n"
    assert "warning: attribute 'confidence_treshold' is not recognized; did you mean 'confidence_threshold'" in err


def test_unknown_sidecar_keys_are_warned_about_as_unknown_attributes_are(capsys, tmp_path):
    model = onnx_models.build(tmp_path / "small.onnx", sidecar={"labels": SMALL_LABELS, "lables_path": "names.txt"})
    status, out, err = run(capsys, "--model", model, "-n", 1, DATA / "coffee.png")
    assert status == 0 and out.split(":")[0] in SMALL_LABELS
    sidecar = str(model.with_suffix(".json"))
    assert f"warning: model sidecar {sidecar!r} key 'lables_path' is not recognized; did you mean 'labels_path'?" in err


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["-n", "-1", str(DATA / "coffee.png")], ["--info", str(DATA / "coffee.png")], ["--format", "xml", "x.png"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2
    assert capsys.readouterr().out == ""


def test_a_count_of_zero_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["-n", "0", str(DATA / "coffee.png")])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "run.sh classify: error: argument -n/--count: must be 1 or more, got 0" in captured.err


@pytest.mark.parametrize("option", ["--sort-into", "--annotate"])
def test_an_output_folder_that_is_a_file_is_a_usage_error(capsys, tmp_path, option):
    taken = tmp_path / "results.txt"
    taken.write_text("a file, not a folder")
    status, out, err = run(capsys, option, taken, DATA / "coffee.png")
    assert status == 2 and out == ""
    assert err == f"run.sh classify: error: {option} {taken}: not a folder (a file of that name exists)\n"
    assert taken.read_text() == "a file, not a folder"


# --info


def test_info_prints_the_loaded_models_description(capsys, small_model):
    status, out, _ = run(capsys, "--info")
    assert status == 0
    info = json.loads(out)
    assert info["model_path"] == str(BUNDLED_MODEL)
    assert info["labels"]["count"] == 1000 and info["input"]["shape"][1:] == [3, 224, 224]

    status, out, _ = run(capsys, "--info", "--model", small_model)
    assert status == 0
    info = json.loads(out)
    assert info["model_path"] == str(small_model)
    assert info["labels"] == {"count": 5, "first": SMALL_LABELS, "source": f"model sidecar {str(small_model.with_suffix('.json'))!r} key 'labels'"}


# --annotate


def test_annotate_writes_labelled_copies_of_the_same_size_and_format(capsys, photos, tmp_path):
    originals = {p: digest(p) for p in photos.rglob("*") if p.is_file()}
    out_dir = tmp_path / "annotated"
    status, out, _ = run(capsys, "--annotate", out_dir, "--format", "json", "-n", 3, photos)
    assert status == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["coffee.png", "rocket.jpg"]
    for name, image_format in (("coffee.png", "PNG"), ("rocket.jpg", "JPEG")):
        source = next(photos.rglob(name))
        with Image.open(source) as original, Image.open(out_dir / name) as annotated:
            assert annotated.format == image_format and annotated.size == original.size
            difference = np.abs(np.asarray(annotated.convert("RGB"), np.int16) - np.asarray(original.convert("RGB"), np.int16))
        height, width = difference.shape[:2]
        assert difference[: height // 3, : width // 2].max() > 100  # the box and its text at the top left
        assert difference[height // 2 :, width // 2 :].mean() < 2  # the rest is the photo (JPEG re-encoding aside)
    assert [json.loads(line)["annotated"] for line in out.splitlines()] == [
        str(out_dir / "coffee.png"), str(out_dir / "rocket.jpg")
    ]
    assert {p: digest(p) for p in photos.rglob("*") if p.is_file()} == originals


def test_annotate_never_overwrites_and_suffixes_clashing_names(capsys, photos, tmp_path):
    shutil.copy(DATA / "chelsea.png", photos / "trip" / "coffee.png")  # a second coffee.png in another folder
    originals = {p: digest(p) for p in photos.rglob("*") if p.is_file()}
    status, _, _ = run(capsys, "--annotate", photos, "-n", 1, photos)  # into the source folder itself
    assert status == 0
    assert {p: digest(p) for p in originals} == originals
    assert sorted(p.name for p in photos.glob("coffee*.png")) == ["coffee-1.png", "coffee-2.png", "coffee.png"]
    assert (photos / "rocket.jpg").exists()  # no clash in the top folder: the name is kept


def test_annotate_writes_viam_rgba_frames_as_png(capsys, tmp_path, small_model):
    width, height = 32, 24
    frame = tmp_path / "frame.rgba"
    frame.write_bytes(VIAM_RGBA_HEADER.pack(b"RGBA", width, height) + bytes([0, 255, 0, 255]) * (width * height))
    status, _, err = run(capsys, "--model", small_model, "--annotate", tmp_path / "out", frame)
    assert status == 0, err
    with Image.open(tmp_path / "out" / "frame.png") as annotated:
        assert annotated.format == "PNG" and annotated.size == (width, height)


# --sort-into


def test_sort_into_copies_each_image_under_its_top_label(capsys, photos, tmp_path):
    originals = {p: digest(p) for p in photos.rglob("*") if p.is_file()}
    (photos / "hubble.jpg").write_bytes((DATA / "hubble_deep_field.jpg").read_bytes())
    sorted_dir = tmp_path / "sorted"
    status, out, _ = run(capsys, "--sort-into", sorted_dir, "--threshold", 0.3, "--format", "json", photos)
    assert status == 0
    copies = sorted(str(p.relative_to(sorted_dir)) for p in sorted_dir.rglob("*") if p.is_file())
    assert copies == ["_uncertain/hubble.jpg", "espresso/coffee.png", "missile/rocket.jpg"]
    assert digest(sorted_dir / "espresso" / "coffee.png") == digest(photos / "coffee.png")
    assert json.loads(out.splitlines()[0])["sorted_copy"] == str(sorted_dir / "espresso" / "coffee.png")
    assert {p: digest(p) for p in originals} == originals and (photos / "coffee.png").exists()

    status, _, _ = run(capsys, "--sort-into", sorted_dir, "--threshold", 0.3, photos)  # again: suffixed, not overwritten
    assert status == 0
    assert sorted(p.name for p in (sorted_dir / "espresso").iterdir()) == ["coffee-1.png", "coffee.png"]


def test_sort_into_makes_safe_folder_names_from_any_label(capsys, tmp_path, small_model):
    images = tmp_path / "images"
    images.mkdir()
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for name, rgb in colours.items():
        Image.new("RGB", (8, 8), rgb).save(images / f"{name}.png")
    sorted_dir = tmp_path / "sorted"
    status, _, err = run(capsys, "--model", small_model, "--sort-into", sorted_dir, images)
    assert status == 0, err
    folders = {p.parent.name: p.name for p in sorted_dir.rglob("*.png")}
    for name, rgb in colours.items():
        label = SMALL_LABELS[int(np.argmax(small_model_confidences(rgb)))]
        assert folders[cli.folder_name(label)] == f"{name}.png"
    assert all(p.parent == sorted_dir for p in sorted_dir.iterdir())  # no label reached outside or nested


def test_a_copy_that_cannot_be_written_is_an_error_but_the_results_are_kept(capsys, tmp_path):
    sorted_dir = tmp_path / "sorted"
    sorted_dir.mkdir()
    (sorted_dir / "espresso").write_text("a file where the label's folder would go")
    status, out, err = run(capsys, "--sort-into", sorted_dir, "--format", "json", "-n", 1, DATA / "coffee.png")
    assert status == 1
    record = json.loads(out)
    assert record["classifications"][0]["label"] == "espresso" and "cannot write" in record["error"]
    assert f"error: {DATA / 'coffee.png'}: cannot write" in err


@pytest.mark.parametrize(
    "label, folder",
    [("red/ish", "red_ish"), ("blue: deep", "blue_ deep"), ("..", "_"), (".hidden", "hidden"), ("coffee mug", "coffee mug")],
)
def test_folder_names(label, folder):
    assert cli.folder_name(label) == folder


# As a program


def test_python_dash_m_exit_statuses_and_clean_stdout(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    shutil.copy(DATA / "coffee.png", tmp_path / "coffee.png")
    command = [sys.executable, "-m", "onnx_classifier", "classify"]
    mixed = subprocess.run(command + ["--format", "json", "-n", "1", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert mixed.returncode == 1
    records = [json.loads(line) for line in mixed.stdout.splitlines()]
    assert [("error" in r, Path(r["path"]).name) for r in records] == [(True, "bad.jpg"), (False, "coffee.png")]
    assert f"error: {tmp_path / 'bad.jpg'}: unsupported image format" in mixed.stderr

    bad_config = subprocess.run(command + ["--head", "max", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad_config.returncode == 2 and bad_config.stdout == ""
    assert "attribute 'head'" in bad_config.stderr


def test_a_float_model_that_nothing_describes_is_warned_about_with_what_was_assumed(capsys, tmp_path):
    model = onnx_models.build(tmp_path / "bare.onnx")
    status, _, err = run(capsys, "--model", model, "-n", 1, DATA / "coffee.png")
    assert status == 0
    assert err.count("has no preprocessing description") == 1
    assert (
        f"warning: model {str(model)!r} has no preprocessing description (no sidecar 'bare.json', no ONNX metadata) and no "
        "attribute sets it: assuming resize 'stretch', mean [0.0] and std [1.0]. "
    ) in err
    assert "set the attributes 'resize', 'mean' and 'std', or write them into 'bare.json' beside it" in err
    # preprocessing attributes, any description, or a uint8 input (raw pixels) leave nothing assumed
    for attributes in ('{"mean": [0.5], "std": [0.5]}', '{"resize": "stretch"}'):
        assert "preprocessing description" not in run(capsys, "--model", model, "--attributes", attributes, "-n", 1, DATA / "coffee.png")[2]
    sidecar = onnx_models.build(tmp_path / "described.onnx", sidecar={"mean": [0.5]})
    assert "preprocessing description" not in run(capsys, "--model", sidecar, "-n", 1, DATA / "coffee.png")[2]
    uint8 = onnx_models.build(tmp_path / "raw.onnx", layout="NHWC", input_type=TensorProto.UINT8)
    assert "preprocessing description" not in run(capsys, "--model", uint8, "-n", 1, DATA / "coffee.png")[2]


def test_paths_in_a_config_file_are_relative_to_the_file(capsys, monkeypatch, tmp_path, small_model):
    folder = tmp_path / "robot"
    folder.mkdir()
    shutil.copy(small_model, folder / "part.onnx")
    (folder / "names.txt").write_text("\n".join(f"part {i}" for i in range(onnx_models.NUM_CLASSES)))
    (folder / "attrs.json").write_text(json.dumps({"model_path": "part.onnx", "label_path": "names.txt", "mean": [0.5], "std": [0.5]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    status, out, err = run(capsys, "--config", folder / "attrs.json", "-n", 1, DATA / "coffee.png")
    assert status == 0, err
    assert out.startswith("part ")
