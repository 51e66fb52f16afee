"""Reading the `voice` field: a voice, an OpenAI voice name, or a blend `af_bella(2)+af_sky(1)`.

A blend is the weighted mean of the voice packs, weights normalised; `a+b` weighs them
equally. Parsing is one pass over the parts, so its cost is linear in the spec's length.
Torch-free: the ingress validates voices here, once per request.
"""
from collections.abc import Collection

from ..errors import InvalidRequest, quote
from ..protocol import VoiceBlend
from ..versions import ModelVersion

MAX_BLEND_PARTS = 4
MAX_VOICE_CHARS = 256  # four parts with long names and weights fit; longer is refused before parsing
MAX_WEIGHT = 1e6  # keeps the sum of weights finite
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="voice", code="invalid_voice")


def voice_not_found(name: str, version: ModelVersion, names: Collection[str]) -> InvalidRequest:
    return InvalidRequest(f"voice {quote(name)} does not exist for model {version.name}; voices: {', '.join(names)}",
                          param="voice", code="voice_not_found")


def _part(text: str) -> tuple[str, float]:
    """`name` or `name(weight)`, spaces allowed around each."""
    name, paren, rest = text.partition("(")
    name = name.strip()
    weight = 1.0
    if paren:
        number, close, after = rest.partition(")")
        if not close or after.strip():
            raise _invalid(f"{quote(text.strip())} is not a voice or voice(weight)")
        try:
            weight = float(number)
        except ValueError:
            raise _invalid(f"{quote(text.strip())} has no number as its weight") from None
        if not 0 < weight < MAX_WEIGHT:  # also refuses NaN and infinity
            raise _invalid(f"voice weights must be positive and below {MAX_WEIGHT:g}: {quote(text.strip())}")
    if not name or not NAME_CHARS.issuperset(name):
        raise _invalid(f"{quote(text.strip())} is not a voice or voice(weight)")
    return name, weight


def parse_voice(spec: str, version: ModelVersion, known: Collection[str]) -> VoiceBlend:
    """The blend a spec names, with OpenAI names mapped to this version's voices.

    Every voice must be in `known` (the voices the version's replicas hold).
    """
    if len(spec) > MAX_VOICE_CHARS:
        raise _invalid(f"a voice spec has at most {MAX_VOICE_CHARS} characters, got {len(spec)}: {quote(spec)}")
    texts = spec.split("+")
    if len(texts) > MAX_BLEND_PARTS:
        raise _invalid(f"a voice blend has at most {MAX_BLEND_PARTS} parts, got {len(texts)}")
    parts = [_part(text) for text in texts]
    parts = [(version.openai_voices.get(name, name), weight) for name, weight in parts]
    names = [name for name, _ in parts]
    if len(set(names)) != len(names):
        raise _invalid(f"voice {quote(spec)} names a voice twice")
    for name in names:
        if name not in known:
            raise voice_not_found(name, version, known)
    total = sum(weight for _, weight in parts)
    return VoiceBlend(tuple((name, weight / total) for name, weight in parts))
