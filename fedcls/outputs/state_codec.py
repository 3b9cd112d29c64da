"""Server state as data: what a checkpoint keeps of the strategy and the server extensions, in a form
``torch.load(weights_only=True)`` reads without running code (issue 16: a crafted checkpoint must
not execute anything).

``encode(obj)`` keeps an object's attributes that are state -- numbers, strings, tensors, numpy
arrays and scalars, Flower ArrayRecords, and lists, tuples, dicts and plain objects of these --
and leaves out what its constructor rebuilds from the config (functions, the config itself, torch
modules and devices) or the object names in its ``TRANSIENT`` attribute (the round's grid, say).
``restore(obj, state)`` writes that state into a freshly built object of the
same config (a ``defaultdict`` there keeps its type). A type it does not know stops the save with its
name, so no state is silently lost; a caller that knows more types (Avalanche's ParamData, a model)
passes ``custom`` encoders and the matching decoders.
Hand-written: pickle runs code on load, and torch's weights_only format holds tensors and plain
containers, not objects.
"""

from __future__ import annotations

import dataclasses
import types
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord

TAG = "__fedcls__"  # marks an encoded value that is not a plain container: {TAG: kind, "v": ...}
REBUILT = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, torch.nn.Module, torch.device,
           type, types.ModuleType)


Custom = dict[type, tuple[str, Callable]]  # type -> (kind, encode(value) -> data); decoders: kind -> build(data)


def encode(obj: object, custom: Custom | None = None) -> dict:
    """The state attributes of `obj` (see the module docstring)."""
    transient = set(getattr(obj, "TRANSIENT", ()))
    return {name: encoded for name, value in vars(obj).items() if name not in transient
            and (encoded := _value(value, f"{type(obj).__name__}.{name}", custom or {})) is not _SKIP}


def restore(obj: object, state: dict, decoders: dict[str, Callable] | None = None) -> None:
    """Write `state` (from ``encode``) into `obj`, a fresh object built from the same config."""
    for name, value in state.items():
        if isinstance(value, dict) and value.get(TAG) == "object":
            restore(getattr(obj, name), value["v"], decoders)
            continue
        decoded, current = _decoded(value, decoders or {}), getattr(obj, name, None)
        if isinstance(current, defaultdict) and isinstance(decoded, dict):
            current.clear()
            current.update(decoded)
        else:
            setattr(obj, name, decoded)


class _Skip:
    pass


_SKIP = _Skip()


def _value(value: object, where: str, custom: Custom):
    for kind_of, (kind, make) in custom.items():
        if isinstance(value, kind_of):
            return {TAG: kind, "v": make(value)}
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, REBUILT) or dataclasses.is_dataclass(value) or callable(value):
        return _SKIP  # rebuilt from the config by the constructor
    if isinstance(value, (np.ndarray, np.generic)):
        return _array(value, where)
    if isinstance(value, ArrayRecord):
        return {TAG: "arrayrecord", "v": value.to_torch_state_dict()}
    if isinstance(value, (list, tuple)):
        items = [_value(v, f"{where}[{i}]", custom) for i, v in enumerate(value)]
        if any(v is _SKIP for v in items):
            raise TypeError(f"{where} holds a value a checkpoint cannot keep as data")
        return items if isinstance(value, list) else {TAG: "tuple", "v": items}
    if isinstance(value, (set, frozenset)):
        items = sorted(value, key=repr)
        if not all(isinstance(v, (bool, int, float, str)) for v in items):
            raise TypeError(f"{where} is a set of values a checkpoint cannot keep as data")
        return {TAG: "set", "v": items}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise TypeError(f"{where} has keys that are not strings or integers")
        return {TAG: "dict", "v": [[k, _value(v, f"{where}[{k!r}]", custom)] for k, v in value.items()]}
    if hasattr(value, "__dict__"):
        return {TAG: "object", "v": encode(value, custom)}
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot keep as data")


def _array(value: np.ndarray | np.generic, where: str) -> dict:
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{where} is a numpy array of {array.dtype}, which a checkpoint cannot keep as data")
    wide = array.astype(np.float64 if array.dtype.kind == "f" else np.int64)  # every dtype torch can hold
    return {TAG: "ndarray" if isinstance(value, np.ndarray) else "npscalar", "dtype": array.dtype.str,
            "v": torch.from_numpy(np.ascontiguousarray(wide.reshape(-1) if wide.ndim == 0 else wide))}


def _decoded(value: object, decoders: dict[str, Callable]):
    if isinstance(value, list):
        return [_decoded(v, decoders) for v in value]
    if not isinstance(value, dict) or TAG not in value:
        return value
    kind, inner = value[TAG], value["v"]
    if kind in decoders:
        return decoders[kind](inner)
    if kind == "ndarray":
        return inner.numpy().astype(np.dtype(value["dtype"]))
    if kind == "npscalar":
        return inner.numpy().astype(np.dtype(value["dtype"]))[0]
    if kind == "arrayrecord":
        return ArrayRecord(inner)
    if kind == "tuple":
        return tuple(_decoded(v, decoders) for v in inner)
    if kind == "set":
        return set(inner)
    if kind == "dict":
        return {k: _decoded(v, decoders) for k, v in inner}
    raise ValueError(f"unknown encoded kind {kind!r}")
