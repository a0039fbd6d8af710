"""The job protocol, sans-IO: frames, codec, the per-role state machine, signing payloads.

This package performs no I/O and imports no networking, chain or HTTP library (a test checks it): it
turns bytes into frames and frames into bytes, and says which frames are allowed when.
"""

from ._codec import MAX_BATCH_TOKENS, MAX_FIELD_CHARS, MAX_FRAME_SIZE, FrameDecoder, decode_payload, encode
from ._connection import PROTOCOL_ID, PROTOCOL_VERSION, SUPPORTED_VERSIONS, JobConnection
from ._frames import (
    FRAME_TYPES,
    Cancel,
    Confirm,
    End,
    Error,
    Frame,
    Hello,
    Offer,
    Receipt,
    Reject,
    Request,
    Resume,
    TokenBatch,
    end_signing_payload,
)
from ._identity import PeerIdentity, public_key_from_peer_id, verify_peer_signature
from ._receipts import receipt_typed_data, recover_receipt_signer, sign_receipt
from ._records import (
    MAX_RECORD_SIZE,
    RECORD_PROTOCOL_ID,
    CapabilityRecord,
    capability_key,
    decode_capability_record,
    encode_capability_record,
    model_key,
    select_capability_record,
    service_key,
    validate_capability_record,
)
from ._state import TRANSITIONS, ClientState, HostState, Role, next_state

__all__ = [
    "FRAME_TYPES",
    "MAX_BATCH_TOKENS",
    "MAX_FIELD_CHARS",
    "MAX_FRAME_SIZE",
    "MAX_RECORD_SIZE",
    "PROTOCOL_ID",
    "PROTOCOL_VERSION",
    "RECORD_PROTOCOL_ID",
    "SUPPORTED_VERSIONS",
    "TRANSITIONS",
    "Cancel",
    "CapabilityRecord",
    "ClientState",
    "Confirm",
    "End",
    "Error",
    "Frame",
    "FrameDecoder",
    "Hello",
    "HostState",
    "JobConnection",
    "Offer",
    "PeerIdentity",
    "Receipt",
    "Reject",
    "Request",
    "Resume",
    "Role",
    "TokenBatch",
    "capability_key",
    "decode_capability_record",
    "decode_payload",
    "encode",
    "encode_capability_record",
    "end_signing_payload",
    "model_key",
    "next_state",
    "public_key_from_peer_id",
    "receipt_typed_data",
    "recover_receipt_signer",
    "select_capability_record",
    "service_key",
    "sign_receipt",
    "validate_capability_record",
    "verify_peer_signature",
]
