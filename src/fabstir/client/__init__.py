"""The client faces: the asyncio SDK and its blocking twin."""

from ._sdk import FabstirSDK, JobHandle, validate_request
from ._sync import FabstirSDKSync, SyncJobHandle, SyncResponseStream

__all__ = [
    "FabstirSDK",
    "FabstirSDKSync",
    "JobHandle",
    "SyncJobHandle",
    "SyncResponseStream",
    "validate_request",
]
