"""Model registry: every network is a function `name(input_shape, num_classes, **knobs) -> keras.Model`.

A builder is registered by decorating it with `@register` in a module of this folder; its
keyword-only arguments (with literal defaults) are the knobs a study may set under `model_args`.
`MODELS` maps each name to its knobs. It is read from the modules' source, without importing
Keras, so that checking a study file or re-running a finished one costs no TensorFlow start-up;
the module is imported when the network is built. Tests are parametrized over `MODELS`, so a
network added here is tested the moment it is registered.

A study may also name a builder outside this folder by import path, `package.module:function`
(`ablation.models.imported`): the same calling convention, its knobs read from its source the same way.
"""

import ast
import importlib
from pathlib import Path
from typing import Any, Callable

from ablation.models.imported import is_import_path, knobs_of, load_builder, read_source

_BUILDERS: dict[str, Callable[..., Any]] = {}  # filled by @register as the modules are imported


def register(builder):
    """Mark a model builder; it is registered under its function name."""
    if _BUILDERS.get(builder.__name__, builder) is not builder:
        raise ValueError(f"model {builder.__name__!r} is registered twice")
    _BUILDERS[builder.__name__] = builder
    return builder


def _read_registry() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every @register builder in this folder: name -> knobs with defaults, and name -> module."""
    knobs, modules = {}, {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if not (isinstance(node, ast.FunctionDef)
                    and any(isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list)):
                continue
            if node.name in knobs:
                raise ValueError(f"model {node.name!r} is registered twice ({modules[node.name]} and {path.stem})")
            knobs[node.name] = knobs_of(node, f"{path.name}: {node.name}")
            modules[node.name] = path.stem
    return knobs, modules


MODELS, _MODULES = _read_registry()


def model_defaults(name: str) -> dict[str, Any]:
    """The knobs of model `name` (a registered name or an import path) and their default values."""
    if is_import_path(name):
        return dict(read_source(name).knobs)
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return dict(MODELS[name])


def get_builder(name: str):
    """The builder function of model `name` (imports its module, and with it Keras)."""
    if is_import_path(name):
        return load_builder(name)
    model_defaults(name)
    importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return _BUILDERS[name]


def build_model(name: str, input_shape=(32, 32, 3), num_classes: int = 10, **model_args):
    """Build model `name`; unknown knobs fail with the allowed ones named."""
    allowed = model_defaults(name)
    unknown = sorted(set(model_args) - set(allowed))
    if unknown:
        raise TypeError(f"model {name!r} has no knob(s) {unknown}; allowed: {sorted(allowed)}")
    return get_builder(name)(input_shape, num_classes, **model_args)
