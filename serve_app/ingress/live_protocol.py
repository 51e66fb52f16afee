"""The messages of live speech over a WebSocket (`/v1/audio/speech/live`), both ways, as JSON text frames.

The client sends `start` (the speech options of POST /v1/audio/speech, less `input` and `stream`),
then `text` deltas, `flush`, `cancel`, `ack` and `close`. The server answers `ready`, then `audio`
(base64 of the encoded bytes, with word times), `utterance.done`, `cancelled` and `error`
(OpenAI's error body). README.md, "Live text over WebSocket", is the reference.
"""
from typing import Annotated, Literal
import base64

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, field_validator

from ..errors import InvalidRequest, ServiceError
from .speech_api import SpeechRequest

# The options a live connection takes in its `start` message: the speech request's own fields and limits.
OPTION_FIELDS = ("model", "voice", "response_format", "speed", "lang_code", "seed")
_STRICT = ConfigDict(extra="forbid")

# Its field validators too (the object form of `voice` becomes the name it holds).
_VALIDATORS = {name: field_validator(*d.info.fields, mode=d.info.mode)(classmethod(d.func.__func__))
               for name, d in SpeechRequest.__pydantic_decorators__.field_validators.items()
               if set(d.info.fields) <= set(OPTION_FIELDS)}
Start = create_model("Start", __config__=_STRICT, __validators__=_VALIDATORS, type=(Literal["start"], ...), **{
    name: (SpeechRequest.model_fields[name].annotation, SpeechRequest.model_fields[name]) for name in OPTION_FIELDS})


class Text(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


def _signal(kind: str) -> type[BaseModel]:
    """A message that is its type alone."""
    return create_model(kind.capitalize(), __config__=_STRICT, type=(Literal[kind], ...))


Flush, Cancel, Close = _signal("flush"), _signal("cancel"), _signal("close")


class Ack(BaseModel):
    model_config = _STRICT
    type: Literal["ack"]
    seq: int = Field(ge=0, description="the `seq` of the last audio message the client has taken")


ClientMessage = Annotated[Start | Text | Flush | Cancel | Close | Ack, Field(discriminator="type")]
_CLIENT_MESSAGE = TypeAdapter(ClientMessage)


def parse_message(raw: str | None) -> BaseModel:
    """One client message; InvalidRequest (sent back as an `error`) when it is not one."""
    if raw is None:
        raise InvalidRequest("messages are JSON text frames, not binary", code="invalid_message")
    try:
        return _CLIENT_MESSAGE.validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        message = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in e.errors())
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        raise InvalidRequest(message, param=param, code="invalid_message") from None


def audio_message(utterance: int, seq: int, data: bytes, words: list[dict]) -> dict:
    return {"type": "audio", "utterance": utterance, "seq": seq, "audio": base64.b64encode(data).decode(),
            "words": words}


def error_message(error: ServiceError) -> dict:
    return {"type": "error", **error.body()}
