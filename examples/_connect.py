"""What the examples share, as README's "Use it from code" shows it: connecting to a machine, and
making a ViamImage of an image file."""

from __future__ import annotations

import os

from PIL import Image
from viam.media.video import CameraMimeType, ViamImage
from viam.robot.client import RobotClient
from viam.rpc.dial import DialOptions


async def connect() -> RobotClient:
    """The machine at VIAM_ADDRESS, with the API key in VIAM_API_KEY_ID and VIAM_API_KEY (the app's
    CONNECT tab shows all three) or, with no key set, a local viam-server without TLS."""
    address = os.environ.get("VIAM_ADDRESS")
    if not address:
        raise SystemExit("set VIAM_ADDRESS (and VIAM_API_KEY_ID, VIAM_API_KEY for a machine in the Viam app)")
    if "VIAM_API_KEY" in os.environ:
        options = RobotClient.Options.with_api_key(api_key=os.environ["VIAM_API_KEY"], api_key_id=os.environ["VIAM_API_KEY_ID"])
    else:
        options = RobotClient.Options(dial_options=DialOptions(insecure=True, disable_webrtc=True))
    return await RobotClient.at_address(address, options)


def image_of(path: str) -> ViamImage:
    """An image file as the Python SDK 0.85 can send it: its own bytes and type, and its size read by
    Pillow (the SDK misreads the size of some JPEGs and refuses JPEGs with EXIF)."""
    with Image.open(path) as opened:
        size, mime_type = opened.size, CameraMimeType.PNG if opened.format == "PNG" else CameraMimeType.JPEG
    with open(path, "rb") as f:
        image = ViamImage(f.read(), mime_type)
    image._width, image._height = size
    return image
