"""A vision service client on grpcio, whose HTTP/2 framing is C (as viam-server's grpc-go is Go), so
that end-to-end rows measure the module rather than a Python client's framing of the frame."""

from __future__ import annotations

from pathlib import Path

import grpc
from viam.proto.service.vision import (
    GetClassificationsFromCameraRequest,
    GetClassificationsFromCameraResponse,
    GetClassificationsRequest,
    GetClassificationsResponse,
)

SERVICE = "/viam.service.vision.v1.VisionService/"


class NativeVisionClient:
    """GetClassifications and GetClassificationsFromCamera of one vision service, over a unix socket."""

    def __init__(self, socket_path: Path, name: str):
        self.name = name
        self.channel = grpc.aio.insecure_channel(
            f"unix://{socket_path}", options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )
        self._classify = self.channel.unary_unary(
            SERVICE + "GetClassifications",
            request_serializer=GetClassificationsRequest.SerializeToString,
            response_deserializer=GetClassificationsResponse.FromString,
        )
        self._from_camera = self.channel.unary_unary(
            SERVICE + "GetClassificationsFromCamera",
            request_serializer=GetClassificationsFromCameraRequest.SerializeToString,
            response_deserializer=GetClassificationsFromCameraResponse.FromString,
        )

    async def get_classifications(self, image: bytes, mime_type: str, count: int):
        request = GetClassificationsRequest(name=self.name, image=image, mime_type=mime_type, n=count)
        return (await self._classify(request)).classifications

    async def get_classifications_from_camera(self, camera: str, count: int):
        request = GetClassificationsFromCameraRequest(name=self.name, camera_name=camera, n=count)
        return (await self._from_camera(request)).classifications

    async def close(self) -> None:
        await self.channel.close()
