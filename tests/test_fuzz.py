"""Fuzzing the decode-and-classify path with mutated real frames.

Every case starts from a real frame (JPEG, PNG, Viam RGBA; depth maps and point clouds too)
and applies a few mutations: bit flips, byte edits, truncation, insertions, deletions,
splices of two frames, edits of header fields (PNG IHDR, JPEG SOF, RGBA size) with the
checksums fixed so the edit reaches the decoder. A case must end in a valid result or a
DecodeError (INVALID_ARGUMENT through the service): never another exception, a crash or a hang.

The suite runs a few hundred cases in-process and a few dozen through the module; the
`bench/fuzz.py` command runs thousands, each in a worker process with a time limit.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
import zlib
from functools import lru_cache
from typing import Optional, Sequence

import pytest
from grpclib import GRPCError, Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from viam.media.video import CameraMimeType, ViamImage

from onnx_classifier import Classifier, DecodeError, parse_service_config

from . import onnx_models
from .conftest import DATA, encode, photo
from .harness import StillCamera, camera_dependency, running_module

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Frames of every kind, small so that thousands of cases decode in seconds.
SEED_NAMES = (
    "jpeg",
    "jpeg-progressive",
    "jpeg-gray",
    "jpeg-cmyk",
    "png-rgb",
    "png-palette",
    "png-rgba-interlaced",
    "png-gray16",
    "rgba",
    "depth",
    "pcd",
)
# A case: which seed, then (operation, a, b, c) mutations with parameters in [0, 65535].
OPERATIONS = ("flip", "byte", "truncate", "insert", "delete", "duplicate", "splice", "png-ihdr", "png-crcs", "jpeg-sof", "rgba-size")
Case = tuple[int, tuple[tuple[str, int, int, int], ...], int]  # (seed index, mutations, count)
MAX_COUNT = 8
MAX_MUTATIONS = 4
PER_CASE_LIMIT_S = 10.0  # a hang, not a slow case: each case decodes in milliseconds


@lru_cache(maxsize=None)
def seeds() -> tuple[bytes, ...]:
    photo = Image.open(DATA / "chelsea.png").convert("RGB").resize((48, 32))
    rgba = photo.convert("RGBA")
    depth = b"DEPTHMAP" + struct.pack(">QQ", 8, 6) + bytes(range(96))
    pcd = b"VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 1\nHEIGHT 1\nPOINTS 1\nDATA ascii\n0 0 1\n"
    frames = {
        "jpeg": encode(photo, "JPEG", quality=80),
        "jpeg-progressive": encode(photo, "JPEG", quality=80, progressive=True),
        "jpeg-gray": encode(photo.convert("L"), "JPEG"),
        "jpeg-cmyk": encode(photo.convert("CMYK"), "JPEG"),
        "png-rgb": encode(photo, "PNG"),
        "png-palette": encode(photo.convert("P"), "PNG"),
        "png-rgba-interlaced": encode(rgba, "PNG", interlace=1),
        "png-gray16": encode(photo.convert("L").convert("I;16"), "PNG"),
        "rgba": b"RGBA" + struct.pack(">II", *rgba.size) + rgba.tobytes(),
        "depth": depth,
        "pcd": pcd,
    }
    return tuple(frames[name] for name in SEED_NAMES)


def _at(value: int, length: int) -> int:
    """A parameter in [0, 65535] as a position in [0, length]."""
    return value * (length + 1) // 65536


def _png_chunks(data: bytes):
    position = len(PNG_MAGIC)
    while position + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        end = position + 12 + length
        if end > len(data):
            return
        yield position, length, data[position + 4 : position + 8]
        position = end


def _fix_png_crcs(data: bytearray) -> None:
    for position, length, kind in list(_png_chunks(bytes(data))):
        crc = zlib.crc32(bytes(data[position + 4 : position + 8 + length]))
        struct.pack_into(">I", data, position + 8 + length, crc)


def mutate(data: bytes, mutations: Sequence[tuple[str, int, int, int]], others: Sequence[bytes] = ()) -> bytes:
    frame = bytearray(data)
    for operation, a, b, c in mutations:
        n = len(frame)
        if operation == "flip" and n:
            frame[_at(a, n - 1)] ^= 1 << (b % 8)
        elif operation == "byte" and n:
            frame[_at(a, n - 1)] = b % 256
        elif operation == "truncate":
            del frame[_at(a, n) :]
        elif operation == "insert":
            frame[_at(a, n) : _at(a, n)] = random.Random(b).randbytes(c % 64 + 1)
        elif operation == "delete":
            start = _at(a, n)
            del frame[start : start + b % 256 + 1]
        elif operation == "duplicate":
            start = _at(a, n)
            frame[start:start] = frame[start : start + b % 512 + 1]
        elif operation == "splice" and others:
            other = others[b % len(others)]
            frame = frame[: _at(a, n)] + bytearray(other[_at(c, len(other)) :])
        elif operation == "png-ihdr" and frame.startswith(PNG_MAGIC) and n >= 33:
            # width, height (0, 1, a few, or huge), bit depth, colour type, compression, filter, interlace
            field = a % 7
            if field < 2:
                value = (0, 1, 3, 255, 65535, 20000, 2**31 - 1, 2**32 - 1)[b % 8]
                struct.pack_into(">I", frame, 16 + 4 * field, value)
            else:
                frame[24 + field - 2] = (0, 1, 2, 3, 4, 6, 8, 16, 255)[b % 9]
            _fix_png_crcs(frame)
        elif operation == "png-crcs" and frame.startswith(PNG_MAGIC):
            _fix_png_crcs(frame)
        elif operation == "jpeg-sof" and frame.startswith(b"\xff\xd8"):
            sof = next((i for i in range(2, n - 9) if frame[i] == 0xFF and frame[i + 1] in (0xC0, 0xC1, 0xC2)), None)
            if sof is not None:
                field = a % 4  # precision, height, width, component count
                if field == 0:
                    frame[sof + 4] = (0, 1, 8, 12, 16, 255)[b % 6]
                elif field in (1, 2):
                    struct.pack_into(">H", frame, sof + 5 + 2 * (field - 1), (0, 1, 7, 4096, 65535)[b % 5])
                else:
                    frame[sof + 9] = (0, 1, 2, 3, 4, 5, 255)[b % 7]
        elif operation == "rgba-size" and frame.startswith(b"RGBA") and n >= 12:
            sizes = (0, 1, 47, 48, 49, 2**16, 2**32 - 1)
            struct.pack_into(">II", frame, 4, sizes[a % 7], sizes[b % 7])
    return bytes(frame)


def case_bytes(case: Case) -> bytes:
    seed, mutations, _ = case
    return mutate(seeds()[seed], mutations, seeds())


def random_case(rng: random.Random) -> Case:
    """A case drawn from `rng`: what bench/fuzz.py and the protocol test run."""
    mutations = tuple(
        (rng.choice(OPERATIONS), rng.randrange(65536), rng.randrange(65536), rng.randrange(65536))
        for _ in range(rng.randint(1, MAX_MUTATIONS))
    )
    return rng.randrange(len(SEED_NAMES)), mutations, rng.randint(-3, MAX_COUNT)


parameter = st.integers(0, 65535)
cases = st.tuples(
    st.integers(0, len(SEED_NAMES) - 1),
    st.lists(st.tuples(st.sampled_from(OPERATIONS), parameter, parameter, parameter), min_size=1, max_size=MAX_MUTATIONS).map(tuple),
    st.integers(-3, MAX_COUNT),
)


def outcome(classifier: Classifier, data: bytes, count: int) -> str:
    """'result' or 'DecodeError'; anything else (another exception, an invalid result) raises."""
    try:
        predictions = classifier.classify(data, count)
    except DecodeError as e:
        assert str(e), "a DecodeError without a message"
        return "DecodeError"
    assert len(predictions) == (max(count, 0) if count < classifier.num_classes else classifier.num_classes)
    confidences = [p.confidence for p in predictions]
    assert all(0.0 <= c <= 1.0 for c in confidences), confidences
    assert confidences == sorted(confidences, reverse=True), confidences
    assert all(p.label in classifier.labels for p in predictions)
    return "result"


@lru_cache(maxsize=None)
def fuzz_classifiers(folder: str) -> tuple[Classifier, ...]:
    """The fast path and the exact path, on a small model; max_image_pixels low enough that huge headers are refused."""
    from pathlib import Path

    path = onnx_models.build(Path(folder) / "fuzz.onnx", size=(32, 32))
    return tuple(
        Classifier.from_onnx_file(parse_service_config({"model_path": str(path), "resize": resize, "exact_preprocessing": exact, "max_image_pixels": 4_000_000}).classifier)
        for resize, exact in (("center_crop", False), ("letterbox", True))
    )


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    return fuzz_classifiers(str(tmp_path_factory.mktemp("fuzz")))


def test_every_seed_is_classified_or_named(classifiers):
    """The unmutated seeds: frames classify, the depth map and the point cloud are named."""
    for name, data in zip(SEED_NAMES, seeds()):
        for classifier in classifiers:
            if name in ("depth", "pcd"):
                with pytest.raises(DecodeError, match="depth map" if name == "depth" else "point cloud"):
                    classifier.classify(data, 3)
            else:
                assert outcome(classifier, data, 3) == "result", name


@settings(
    derandomize=True,
    deadline=None,
    max_examples=300,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases, exact=st.booleans())
def test_fuzz_decode_and_classify(classifiers, case, exact):
    data = case_bytes(case)
    started = time.monotonic()
    outcome(classifiers[exact], data, case[2])
    assert time.monotonic() - started < PER_CASE_LIMIT_S, "a case took more than 10 s: a hang"


def test_mutations_reach_the_decoder(classifiers):
    """Not every case can fail at the first byte: the mutated corpus yields results and several kinds of error."""
    rng = random.Random(7)
    outcomes, messages = {"result": 0, "DecodeError": 0}, set()
    for _ in range(200):
        case = random_case(rng)
        data = case_bytes(case)
        try:
            classifiers[0].classify(data, case[2])
            outcomes["result"] += 1
        except DecodeError as e:
            outcomes["DecodeError"] += 1
            messages.add(" ".join(str(e).split()[:3]))
    assert outcomes["result"] >= 20 and outcomes["DecodeError"] >= 20, outcomes
    assert len(messages) >= 3, messages


PROTOCOL_CASES = 40


async def test_fuzz_through_the_module_never_unknown():
    """A few dozen mutated frames, half sent by a client and half served by a camera: each is a
    result or INVALID_ARGUMENT, never UNKNOWN or another status, and the module keeps serving."""
    camera = StillCamera("cam", seeds()[0])
    rng = random.Random(2024)
    statuses: dict[str, int] = {}
    async with running_module([camera]) as module:
        await module.add({"camera_name": "cam", "max_image_pixels": 4_000_000}, [camera_dependency("cam")])
        vision = module.vision()
        for index in range(PROTOCOL_CASES):
            case = random_case(rng)
            data = case_bytes(case)
            try:
                if index % 2:
                    camera.frame = data
                    answer = await asyncio.wait_for(vision.get_classifications_from_camera("cam", case[2]), 30)
                else:
                    image = ViamImage(data, CameraMimeType.JPEG)
                    image._width, image._height = 1, 1  # the client would parse the bytes for these; the service must
                    answer = await asyncio.wait_for(vision.get_classifications(image, case[2]), 30)
                assert len(answer) == max(case[2], 0), (case, answer)  # a negative count: no results
                status = "OK"
            except GRPCError as e:
                assert e.status is Status.INVALID_ARGUMENT, (case, e.status, e.message)
                assert e.message, case
                status = e.status.name
            statuses[status] = statuses.get(status, 0) + 1
        camera.frame = seeds()[0]
        assert await vision.get_classifications_from_camera("cam", 1)
        assert module.process.poll() is None
    assert statuses.get("OK", 0) and statuses.get("INVALID_ARGUMENT", 0), statuses


def peak_resident_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _bad_frames() -> list[tuple[str, bytes, str, str]]:
    """(what, bytes, the camera's MIME type, a fragment the error must contain) for each bad input the service must name."""
    from .test_decode import BOMBS, PCD_ASCII, depth_frame, jpeg_claiming, png_bomb, png_with_metadata_bomb

    rgba = seeds()[SEED_NAMES.index("rgba")]
    return [
        ("random bytes", random.Random(5).randbytes(4096), "image/jpeg", "unsupported image format"),
        ("empty", b"", "image/jpeg", "empty (0 bytes)"),
        ("JPEG truncated in its header", seeds()[0][:300], "image/jpeg", "cannot read the JPEG image (300 bytes): the data ends inside the header (truncated)"),
        ("JPEG truncated in its data", photo("rocket.jpg")[:20000], "image/jpeg", "cannot decode the JPEG data: the data ends early (truncated)"),
        ("depth map", depth_frame(64, 48), "image/vnd.viam.dep", "a depth map of 64x48 (image/vnd.viam.dep), not a colour image"),
        ("point cloud", PCD_ASCII, "pointcloud/pcd", "a point cloud (pointcloud/pcd), not an image"),
        ("RGBA of a wrong length", rgba[:-4], "image/vnd.viam.rgba", "image/vnd.viam.rgba header says 48x32"),
        ("PNG bomb", png_bomb(20000, 20000), "image/png", "20000x20000 = 400000000 pixels, more than max_image_pixels"),
        ("JPEG bomb", jpeg_claiming(60000, 60000), "image/jpeg", "more than max_image_pixels"),
        ("PNG bomb, a few KB", BOMBS["png-20000x20000-rgb-few-kb"](), "image/png", "more than max_image_pixels"),
        ("PNG metadata bomb", png_with_metadata_bomb(), "image/png", ""),
    ]


async def test_bad_frames_through_the_module_are_invalid_argument_without_a_memory_spike():
    """Each bad input of the issue, sent by a client and served by the camera: INVALID_ARGUMENT with a
    message naming the problem (and the camera), or a result for what is a valid image after all;
    the module's peak resident memory grows by less than 24 MiB over all of them; it keeps serving."""
    good = seeds()[0]
    camera = StillCamera("cam", good)
    async with running_module([camera]) as module:
        await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
        vision = module.vision()
        for _ in range(3):  # warm-up, so the peak includes what a normal frame costs
            await vision.get_classifications(ViamImage(good, CameraMimeType.JPEG), 5)
            await vision.get_classifications_from_camera("cam", 5)
        peak = peak_resident_mib(module.process.pid)
        for what, data, mime_type, fragment in _bad_frames():
            image = ViamImage(data, CameraMimeType.JPEG)
            image._width, image._height = 1, 1
            camera.frame, camera.mime_type = data, mime_type
            for source, call in (
                ("client", lambda: vision.get_classifications(image, 3)),
                ("camera", lambda: vision.get_classifications_from_camera("cam", 3)),
            ):
                try:
                    answer = await asyncio.wait_for(call(), 30)
                except GRPCError as e:
                    assert e.status is Status.INVALID_ARGUMENT, (what, source, e.status, e.message)
                    # A camera's own MIME type for a depth map or point cloud is trusted: the frame is
                    # refused by its type, with a hint to use the camera's colour stream.
                    if source == "camera" and mime_type in ("image/vnd.viam.dep", "pointcloud/pcd"):
                        fragment = f"returned only {mime_type}"
                    assert fragment in e.message, (what, source, e.message)
                    if source == "camera":
                        assert "camera 'cam'" in e.message, e.message
                else:
                    assert fragment == "" and len(answer) == 3, (what, source, answer)
        growth = peak_resident_mib(module.process.pid) - peak
        camera.frame, camera.mime_type = good, "image/jpeg"
        assert len(await vision.get_classifications_from_camera("cam", 2)) == 2
        assert module.process.poll() is None
    assert growth < 24, f"the module's peak resident memory grew by {growth:.1f} MiB"
