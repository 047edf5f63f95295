"""Connecting to a machine, shared by the examples: address and API key come from the environment,
as the Viam app's CONNECT tab shows them."""

from __future__ import annotations

import os

from viam.robot.client import RobotClient


async def connect() -> RobotClient:
    try:
        address, key_id, key = os.environ["VIAM_ADDRESS"], os.environ["VIAM_API_KEY_ID"], os.environ["VIAM_API_KEY"]
    except KeyError as missing:
        raise SystemExit(f"set {missing} (and VIAM_ADDRESS, VIAM_API_KEY_ID, VIAM_API_KEY) to your machine's values")
    return await RobotClient.at_address(address, RobotClient.Options.with_api_key(api_key=key, api_key_id=key_id))
