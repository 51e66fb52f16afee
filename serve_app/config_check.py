"""Strict checking of Serve config files.

Serve's schema silently drops keys it does not define, so a typo such as `num_replica` or
`hostt` deploys without error and without effect. `unknown_keys` walks Ray's own pydantic
models (so it follows whatever the installed Ray defines) and reports such keys.
"""
import types
import typing

from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema


def unknown_keys(serve_config: dict) -> list[str]:
    """Dotted paths (`applications[0].deployments[1].num_replica`) of keys Serve does not define."""
    return _model_keys(ServeDeploySchema, serve_config, "")


def validate_serve_config(cfg: dict) -> None:
    """Raise ValueError if Serve rejects `cfg` or if it holds keys Serve would ignore."""
    ServeDeploySchema.model_validate(cfg)  # pydantic's ValidationError is a ValueError
    unknown = unknown_keys(cfg)
    if unknown:
        raise ValueError(f"keys Ray Serve does not define: {', '.join(unknown)}")


def _model_keys(model: type[BaseModel], data: dict, path: str) -> list[str]:
    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field.annotation
        if isinstance(field.alias, str):
            fields[field.alias] = field.annotation
    found = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key in fields:
            found += _value_keys(fields[key], value, where)
        else:
            found.append(where)
    return found


def _value_keys(annotation, value, path: str) -> list[str]:
    # Only descend where the schema has structure: a dict under a plain `dict` annotation
    # (args, user_config, runtime_env, resources) is free-form by design.
    if isinstance(value, dict):
        model = next((m for m in _members(annotation) if _is_model(m)), None)
        return _model_keys(model, value, path) if model else []
    if isinstance(value, list):
        item = next((typing.get_args(m)[0] for m in _members(annotation)
                     if typing.get_origin(m) is list and typing.get_args(m)), None)
        if item is None:
            return []
        return [k for i, v in enumerate(value) for k in _value_keys(item, v, f"{path}[{i}]")]
    return []


def _members(annotation) -> list:
    """The types an annotation admits, with Optional/Union/Annotated unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
