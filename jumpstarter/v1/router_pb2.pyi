from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_TYPE_DATA: _ClassVar[FrameType]
    FRAME_TYPE_RST_STREAM: _ClassVar[FrameType]
    FRAME_TYPE_PING: _ClassVar[FrameType]
    FRAME_TYPE_GOAWAY: _ClassVar[FrameType]
FRAME_TYPE_DATA: FrameType
FRAME_TYPE_RST_STREAM: FrameType
FRAME_TYPE_PING: FrameType
FRAME_TYPE_GOAWAY: FrameType

class StreamRequest(_message.Message):
    __slots__ = ("payload", "frame_type")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    FRAME_TYPE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    frame_type: FrameType
    def __init__(self, payload: _Optional[bytes] = ..., frame_type: _Optional[_Union[FrameType, str]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("payload", "frame_type")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    FRAME_TYPE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    frame_type: FrameType
    def __init__(self, payload: _Optional[bytes] = ..., frame_type: _Optional[_Union[FrameType, str]] = ...) -> None: ...
