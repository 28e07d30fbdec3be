"""Model registry: every network is a function `name(input_shape, num_classes, **knobs) -> keras.Model`.

Register a builder with `@register`; its keyword-only arguments (with their defaults) are the
knobs a study may set under `model_args`. Tests are parametrized over `MODELS`, so a network
added here is tested the moment it is registered.
"""

import inspect
from typing import Any, Callable

MODELS: dict[str, Callable[..., Any]] = {}


def register(builder):
    """Add a model builder to the registry under its function name."""
    if builder.__name__ in MODELS:
        raise ValueError(f"model {builder.__name__!r} is registered twice")
    MODELS[builder.__name__] = builder
    return builder


def model_defaults(name: str) -> dict[str, Any]:
    """The knobs of model `name` and their default values."""
    builder = get_builder(name)
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def get_builder(name: str):
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(name: str, input_shape=(32, 32, 3), num_classes: int = 10, **model_args):
    """Build model `name`; unknown knobs fail with the allowed ones named."""
    allowed = model_defaults(name)
    unknown = sorted(set(model_args) - set(allowed))
    if unknown:
        raise TypeError(f"model {name!r} has no knob(s) {unknown}; allowed: {sorted(allowed)}")
    return get_builder(name)(input_shape, num_classes, **model_args)


# Importing the modules registers their builders.
from ablation.models import template, vgg, keras_resnet, resnet18, preact, inception_resnet  # noqa: E402,F401
