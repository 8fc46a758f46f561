"""Every wire format of artiq_bus, and nothing else (specified in docs/protocol.md)."""

from .codec import (OUT_OF_BAND_MIN_BYTES, ExtCode, freeze_buffers, pack, pack_into, unpack,
                    body_ends)
from .errors import (BusError, DeadlineExceeded, EncodeError, NoSuchMethod, NoSuchService,
                     Overloaded, ProtocolError, RemoteError, ServiceDied, Unauthorized,
                     Unavailable, error_from_wire, error_to_wire, register_error)
from .frames import (MAX_NAME_BYTES, MAX_REQUEST_ID_BYTES, VERSION, Command, Liveness, Status,
                     check_name, decode_timeout, encode_timeout, frame_buffer, frame_bytes,
                     message_envelope,
                     register_envelope, reply_envelope, reply_result, request_envelope,
                     split_command)
from .publications import (control_topic, filter_level, key_text, levels,
                           msgpack_array_header, stream_topic, struct_filter_topic,
                           struct_topic, sync_topic)
from .updates import UpdateAction, apply_update, top_key

__all__ = [
    "OUT_OF_BAND_MIN_BYTES", "ExtCode", "freeze_buffers", "pack", "pack_into", "unpack",
    "body_ends",
    "BusError", "DeadlineExceeded", "EncodeError", "NoSuchMethod", "NoSuchService",
    "Overloaded", "ProtocolError", "RemoteError", "ServiceDied", "Unauthorized",
    "Unavailable", "error_from_wire", "error_to_wire", "register_error",
    "MAX_NAME_BYTES", "MAX_REQUEST_ID_BYTES", "VERSION", "Command", "Liveness", "Status",
    "check_name", "decode_timeout", "encode_timeout", "split_command", "frame_bytes",
    "frame_buffer", "request_envelope",
    "message_envelope", "register_envelope", "reply_envelope", "reply_result",
    "control_topic", "filter_level", "key_text", "levels", "msgpack_array_header",
    "stream_topic", "struct_filter_topic", "struct_topic", "sync_topic",
    "UpdateAction", "apply_update", "top_key",
]
