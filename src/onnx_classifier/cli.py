"""Command line: classify image files with the same configuration and checks as the service.

`run.sh classify PATH...` takes files, folders (searched recursively) and globs, prints one
record per image to stdout (text, JSON Lines or CSV), and can draw the results onto copies
of the images or sort copies into one folder per top label. Progress, errors and the summary
go to stderr, so machine formats stay clean. Exit status: 0 when every image was classified,
1 when any could not be, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from PIL import Image, ImageDraw, ImageFont, JpegImagePlugin

from .classifier import Classifier, validate_service_config
from .config import ConfigError, OnnxFile, ServiceConfig
from .decode import DecodeError, load, open_image
from .head import LabelFilter, Prediction

PROG = "run.sh classify"
# Files a folder search picks up; files named on the command line (or matched by a glob) are
# always tried, and for every file the bytes, not the name, decide how it is decoded.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".rgba"}
UNCERTAIN_FOLDER = "_uncertain"
GLOB_CHARACTERS = re.compile(r"[*?[]")
# Anything but letters, digits and a few harmless marks becomes "_" in a label's folder name:
# labels may hold "/", ":" or characters some file systems refuse.
UNSAFE_IN_FOLDER_NAME = re.compile(r"[^\w .,()+'&-]")
MAX_FOLDER_NAME = 100


class UsageError(Exception):
    """A command line or configuration the CLI cannot run with (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Classify images with an ONNX model (the bundled ImageNet model by default) using the same attributes "
            "and checks as the vision service. PATHs are image files, folders (searched recursively for "
            + ", ".join(sorted(IMAGE_SUFFIXES))
            + " files) or globs such as 'photos/**/*.jpg'."
        ),
        epilog="Exit status: 0 all images classified, 1 some could not be read or written, 2 usage or configuration error.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image file, folder or glob")
    parser.add_argument("-n", "--count", type=positive_int, default=5, help="classes per image, 1 or more (default 5)")
    parser.add_argument(
        "--format", choices=("text", "json", "csv"), default="text",
        help="text: 'label: confidence' lines; json: one JSON object per image (JSON Lines); "
        "csv: path,rank,label,confidence,error rows (default text)",
    )
    parser.add_argument(
        "--info", action="store_true",
        help="print what the service's do_command {\"command\": \"info\"} returns for this configuration, then exit",
    )

    attributes = parser.add_argument_group(
        "service attributes",
        "Later sources override earlier ones: --config, then --attributes, then the flags below. "
        "Paths inside --config are relative to that file's folder; paths inside --attributes are read as the "
        "service reads them (relative to the module's folder); --model and --labels are relative to the current "
        "directory.",
    )
    attributes.add_argument("--config", metavar="FILE", help="a JSON file holding the service's attributes object")
    attributes.add_argument(
        "--attributes", metavar="JSON",
        help='service attributes as JSON, e.g. \'{"model_path": "/models/my.onnx", "head": "sigmoid"}\'',
    )
    attributes.add_argument("--model", metavar="ONNX", help="model_path: the ONNX classifier file")
    attributes.add_argument("--labels", metavar="FILE", help="labels_path: one label per line")
    attributes.add_argument("--head", metavar="{auto,softmax,sigmoid,none}", help="head: how scores become confidences")
    attributes.add_argument("--threshold", type=float, metavar="CONFIDENCE", help="confidence_threshold: drop results below it (0 to 1)")
    attributes.add_argument(
        "--region", type=float, nargs=4, metavar=("X_MIN", "Y_MIN", "X_MAX", "Y_MAX"),
        help="region: classify only this part of each image, in fractions 0..1 of its width and height",
    )

    outputs = parser.add_argument_group("outputs besides the records (originals are never changed)")
    outputs.add_argument(
        "--annotate", metavar="OUT_DIR", type=Path,
        help="write each image with its labels and confidences drawn at the top left into OUT_DIR",
    )
    outputs.add_argument(
        "--sort-into", metavar="OUT_DIR", type=Path,
        help=f"copy each image into OUT_DIR/<top label>/, or OUT_DIR/{UNCERTAIN_FOLDER}/ when no label passes the threshold",
    )
    return parser


def positive_int(text: str) -> int:
    """A count of 0 would print an empty record for every image (the service's count 0 returns nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def read_json_object(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{source} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise UsageError(f"{source} must be a JSON object of service attributes, got {type(value).__name__}")
    return value


# The attributes that name files (labels_path under the built-in service's name too).
PATH_KEYS = ("model_path", "labels_path", "label_path")


def gather_attributes(args: argparse.Namespace) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if args.config is not None:
        try:
            text = Path(args.config).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--config {args.config}: {getattr(e, 'strerror', None) or e}") from e
        from_file = read_json_object(text, f"--config {args.config}")
        # A config file is written beside what it names, wherever the command runs.
        folder = Path(args.config).resolve().parent
        for key in PATH_KEYS:
            value = from_file.get(key)
            if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
                from_file[key] = str(folder / value)
        attributes.update(from_file)
    if args.attributes is not None:
        attributes.update(read_json_object(args.attributes, "--attributes"))
    flags = {
        "model_path": None if args.model is None else os.path.abspath(os.path.expanduser(args.model)),
        "labels_path": None if args.labels is None else os.path.abspath(os.path.expanduser(args.labels)),
        "head": args.head,
        "confidence_threshold": args.threshold,
        "region": args.region,
    }
    attributes.update({key: value for key, value in flags.items() if value is not None})
    return attributes


@dataclass
class Inputs:
    images: list[Path]
    problems: list[tuple[str, str]]  # (argument, why it gave no image)


def find_images(arguments: Sequence[str], skip_folders: Sequence[Path]) -> Inputs:
    """Each argument in the order given, a folder's or glob's files sorted; every file once.
    Folders the CLI writes into are not searched, so that a second run does not classify its own output."""
    skipped = {folder.resolve() for folder in skip_folders}
    images: list[Path] = []
    problems: list[tuple[str, str]] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = search_folder(path, skipped)
            if not found:
                problems.append((argument, f"no {'/'.join(sorted(IMAGE_SUFFIXES))} files in this folder"))
        elif path.exists():
            found = [path]
        elif GLOB_CHARACTERS.search(argument):
            found = []
            for match in sorted(glob.glob(os.path.expanduser(argument), recursive=True)):
                match_path = Path(match)
                found += search_folder(match_path, skipped) if match_path.is_dir() else [match_path]
            if not found:
                problems.append((argument, "no file matches this pattern"))
        else:
            found = []
            problems.append((argument, "no such file or directory"))
        images += found
    seen: set[Path] = set()
    unique = []
    for image in images:  # a file reached twice (a folder and a glob inside it) is classified once
        if image.resolve() not in seen:
            seen.add(image.resolve())
            unique.append(image)
    return Inputs(unique, problems)


def search_folder(folder: Path, skipped: set[Path]) -> list[Path]:
    found = []
    for root, folders, files in os.walk(folder):
        # Hidden entries are skipped: "._photo.jpg" files that macOS leaves on shared drives are not images.
        folders[:] = sorted(f for f in folders if not f.startswith(".") and Path(root, f).resolve() not in skipped)
        found += [
            Path(root, name) for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        ]
    return found


@dataclass
class Outcome:
    """What became of one image: its predictions, or why it has none."""

    path: Path
    predictions: Optional[list[Prediction]] = None
    error: Optional[str] = None
    annotated: Optional[Path] = None
    sorted_copy: Optional[Path] = None


class RecordWriter:
    """One record per image on stdout in the chosen format."""

    def __init__(self, out: TextIO, output_format: str, several: bool):
        self.out = out
        self.format = output_format
        self.several = several
        if output_format == "csv":
            self.csv = csv.writer(out, lineterminator="\n")
            self.csv.writerow(["path", "rank", "label", "confidence", "error"])

    def write(self, outcome: Outcome) -> None:
        """An image that was classified but whose copy could not be written has both its results and the error."""
        path, predictions, error = str(outcome.path), outcome.predictions, outcome.error
        if self.format == "json":
            record: dict[str, Any] = {"path": path}
            if predictions is not None:
                record["classifications"] = [{"label": p.label, "confidence": p.confidence} for p in predictions]
            if error is not None:
                record["error"] = error
            if outcome.annotated is not None:
                record["annotated"] = str(outcome.annotated)
            if outcome.sorted_copy is not None:
                record["sorted_copy"] = str(outcome.sorted_copy)
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.format == "csv":
            rows = [[path, rank, p.label, p.confidence] for rank, p in enumerate(predictions or [], 1)]
            # Every image has a row, even one with nothing above the threshold or nothing read.
            for row in rows or [[path, "", "", ""]]:
                self.csv.writerow(row + [error or ""])
        elif predictions is not None:  # text: errors are on stderr only
            if self.several:
                self.out.write(f"{path}:\n")
            lines = [f"{p.label}: {p.confidence:.2f}\n" for p in predictions] or ["(no label passes the threshold)\n"]
            self.out.writelines(lines)
        self.out.flush()


class Progress:
    """A one-line bar on stderr, redrawn in place with carriage returns."""

    def __init__(self, stream: TextIO, total: int, enabled: bool):
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.width = 0

    def show(self, done: int, current: str) -> None:
        if not self.enabled:
            return
        columns = shutil.get_terminal_size().columns
        filled = 20 * done // self.total
        line = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} {current}"[: columns - 1]
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def clear(self) -> None:
        """Blank the bar, so that another line (on stderr, or on stdout in the same terminal) starts clean."""
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def write_unique(folder: Path, name: str, data: bytes) -> Path:
    """`data` in a new file `name` in `folder`, or `stem-1.ext`, `stem-2.ext`... when that name is taken.
    Exclusive creation, so that no existing file (an original included) is ever overwritten."""
    stem, suffix = os.path.splitext(name)
    attempt = 0
    while True:
        path = folder / (name if attempt == 0 else f"{stem}-{attempt}{suffix}")
        try:
            with open(path, "xb") as file:
                file.write(data)
            return path
        except FileExistsError:
            attempt += 1


def folder_name(label: str) -> str:
    """A label as one safe folder name: no separators or control characters, never '.', '..' or hidden."""
    name = UNSAFE_IN_FOLDER_NAME.sub("_", label).strip(" .")[:MAX_FOLDER_NAME]
    return name or "_"


def annotated_image(data: bytes, predictions: Sequence[Prediction], max_pixels: int) -> tuple[bytes, str]:
    """The image with its predictions in a dark box at the top left, like the transform camera's
    "classifications" overlay; encoded as the source was (JPEG stays JPEG), Viam RGBA as PNG."""
    image = open_image(data, max_pixels)
    load(image)
    source_format = image.format
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    canvas = image.convert("RGBA")
    font_size = max(12, round(min(canvas.size) / 24))
    font = ImageFont.load_default(size=font_size)
    text = "\n".join(f"{p.label}: {p.confidence:.2f}" for p in predictions) or "no label passes the threshold"
    padding = font_size // 2
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    origin = (2 * padding, 2 * padding)
    left, top, right, bottom = draw.multiline_textbbox(origin, text, font=font, spacing=padding // 2)
    draw.rectangle((left - padding, top - padding, right + padding, bottom + padding), fill=(0, 0, 0, 170))
    draw.multiline_text(origin, text, font=font, fill=(255, 255, 255, 255), spacing=padding // 2)
    result = Image.alpha_composite(canvas, overlay)
    buffer = io.BytesIO()
    if source_format == "JPEG":
        # The source's own quantization tables and chroma subsampling: the copy looks as good as the original.
        sampling = JpegImagePlugin.get_sampling(image)
        options = {"qtables": image.quantization, **({"subsampling": sampling} if sampling >= 0 else {})}
        result.convert("RGB").save(buffer, "JPEG", **options)
    else:
        (result if has_alpha else result.convert("RGB")).save(buffer, "PNG")
    return buffer.getvalue(), source_format or "PNG"


def annotated_name(name: str, image_format: str) -> str:
    stem, suffix = os.path.splitext(name)
    if image_format == "JPEG":
        return name if suffix.lower() in {".jpg", ".jpeg", ".jpe", ".jfif"} else stem + ".jpg"
    return name if suffix.lower() == ".png" else stem + ".png"


class Run:
    """Classifies images one by one along the service's path: scores for the region, then the label rules."""

    def __init__(self, args: argparse.Namespace, config: ServiceConfig, classifier: Classifier):
        self.args = args
        self.config = config
        self.classifier = classifier
        self.label_filter = LabelFilter(config.labels, classifier.labels)

    def process(self, path: Path) -> tuple[Outcome, float]:
        """The outcome, and the seconds spent reading and classifying (not writing outputs)."""
        started = time.perf_counter()
        try:
            data = path.read_bytes()
            scores = self.classifier.image_scores(data, self.config.region)
        except OSError as e:
            return Outcome(path, error=e.strerror or str(e)), 0.0
        except DecodeError as e:
            return Outcome(path, error=str(e)), 0.0
        elapsed = time.perf_counter() - started
        outcome = Outcome(path, predictions=self.label_filter.select(scores, self.args.count))
        try:
            if self.args.annotate is not None:
                annotated, image_format = annotated_image(data, outcome.predictions, self.config.classifier.max_image_pixels)
                outcome.annotated = write_unique(self.args.annotate, annotated_name(path.name, image_format), annotated)
            if self.args.sort_into is not None:
                top = self.label_filter.select(scores, 1)
                folder = self.args.sort_into / (folder_name(top[0].label) if top else UNCERTAIN_FOLDER)
                folder.mkdir(exist_ok=True)
                outcome.sorted_copy = write_unique(folder, path.name, data)
                shutil.copystat(path, outcome.sorted_copy)  # keep the original's times, as `cp -p` would
        except DecodeError as e:  # decoded for the model, but not at full size for drawing on
            outcome.error = f"cannot annotate: {e}"
        except OSError as e:
            outcome.error = f"cannot write the output: {e}"
        return outcome, elapsed


def load_classifier(args: argparse.Namespace, err: TextIO) -> tuple[ServiceConfig, Classifier]:
    """The configuration, checked as the service checks it, and its model loaded; ConfigError names the attribute."""
    config, warnings = validate_service_config(gather_attributes(args))
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    if not isinstance(config.classifier.source, OnnxFile):
        raise ConfigError(
            "attribute 'mlmodel_name' names an ML model service, which runs on a machine: the command line runs "
            "ONNX files (model_path) in this process"
        )
    return config, Classifier.from_onnx_file(config.classifier)


def prepare_output_folders(args: argparse.Namespace) -> None:
    for option, folder in (("--annotate", args.annotate), ("--sort-into", args.sort_into)):
        if folder is None:
            continue
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{option} {folder}: not a folder (a file of that name exists)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{option} {folder}: {e.strerror or e}") from e


def summary(images: int, classified: int, failed: int, classify_seconds: float, wall_seconds: float) -> str:
    """One line: how many images, how many classified and failed, and the mean time to read and classify one."""
    line = f"{images} image{'s' if images != 1 else ''}: {classified} classified, {failed} error{'s' if failed != 1 else ''}"
    if classified:
        line += f", {1000 * classify_seconds / classified:.1f} ms per image"
    return line + f" ({wall_seconds:.1f} s in all)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    if args.info and args.paths:
        parser.error("--info prints the model's description and exits; give it no PATHs")
    if not args.info and not args.paths:
        parser.error("give at least one image file, folder or glob (or --info)")
    try:
        config, classifier = load_classifier(args, err)
        if args.info:
            info = {**classifier.info(), "service": config.summary()}
            out.write(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
            return 0
        prepare_output_folders(args)
    except (UsageError, ConfigError) as e:
        print(f"{PROG}: error: {e}", file=err)
        return 2

    started = time.perf_counter()
    inputs = find_images(args.paths, [folder for folder in (args.annotate, args.sort_into) if folder is not None])
    for argument, problem in inputs.problems:
        print(f"error: {argument}: {problem}", file=err)
    total = len(inputs.images)
    several = total + len(inputs.problems) > 1
    writer = RecordWriter(out, args.format, several=total > 1)
    progress = Progress(err, total, enabled=total > 1 and err.isatty())
    run = Run(args, config, classifier)
    failed, classified, classify_seconds = len(inputs.problems), 0, 0.0
    try:
        for done, path in enumerate(inputs.images):
            progress.show(done, path.name)
            outcome, seconds = run.process(path)
            progress.clear()
            if outcome.error is not None:
                failed += 1
                print(f"error: {path}: {outcome.error}", file=err)
            if outcome.predictions is not None:
                classified += 1
                classify_seconds += seconds
            writer.write(outcome)
    except KeyboardInterrupt:
        progress.clear()
        print("interrupted", file=err)
        return 130
    except BrokenPipeError:
        # The reader stopped early (`| head`): silence the flush at exit, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1
    if several:
        print(summary(total, classified, failed, classify_seconds, time.perf_counter() - started), file=err)
    return 1 if failed else 0
