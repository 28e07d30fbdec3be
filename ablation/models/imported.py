"""Models by import path: `model = "package.module:function"` names a builder outside the registry.

The function is called as the registry's builders are, `function(input_shape, num_classes, **knobs)`;
its keyword-only arguments with literal defaults are its knobs. Like the registry, this module reads
them from the source with `ast`: the module is found (`importlib.util.find_spec`, which imports
only its parent packages) and read, not executed, so checking a study costs no Keras start-up. The
sha256 of the module's file is part of the config's hash: an edited model is other work.
"""

import ast
import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class ModelError(ValueError):
    """An import-path model that cannot be used; the message names the module and what went wrong."""


@dataclass(frozen=True)
class ModelSource:
    """What a study's import path names: the function, its knobs and the digest of its module's file."""

    module: str
    function: str
    file: Path
    digest: str  # sha256 of the module's file, hex
    knobs: dict[str, Any]


def is_import_path(name) -> bool:
    """Whether a model name is an import path (`package.module:function`) rather than a registered name."""
    return isinstance(name, str) and ":" in name


def knobs_of(node: ast.FunctionDef, where: str) -> dict[str, Any]:
    """A builder's keyword-only arguments and their literal defaults, read from its `ast` node."""
    try:
        defaults = [ast.literal_eval(default) for default in node.args.kw_defaults]
    except ValueError:
        raise ModelError(f"{where}: every knob (keyword-only argument) needs a literal default") from None
    return {arg.arg: default for arg, default in zip(node.args.kwonlyargs, defaults)}


def read_source(path: str) -> ModelSource:
    """The function an import path names, read from its module's file without running it."""
    module, _, function = path.partition(":")
    where = f"model {path!r}"
    if not (all(part.isidentifier() for part in module.split(".")) and function.isidentifier()):
        raise ModelError(f"{where}: expected package.module:function (a module on the Python path, a function in it)")
    file = _module_file(module, where)
    try:
        text = file.read_bytes()
        tree = ast.parse(text, str(file))
    except OSError as error:
        raise ModelError(f"{where}: cannot read {file}: {error.strerror}") from None
    except (SyntaxError, ValueError) as error:
        raise ModelError(f"{where}: module {module} ({file}) is not valid Python: {error}") from None
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if node is None:
        raise ModelError(f"{where}: module {module} ({file}) has no function {function} (a top-level def)")
    if len(node.args.posonlyargs + node.args.args) < 2 and node.args.vararg is None:
        raise ModelError(f"{where}: {function} must take (input_shape, num_classes, *, knobs...)")
    knobs = knobs_of(node, f"{where}: {function}")
    return ModelSource(module, function, file, hashlib.sha256(text).hexdigest(), knobs)


def _module_file(module: str, where: str) -> Path:
    """The source file of `module`, found on the Python path; its parent packages are imported, it is not."""
    try:
        spec = importlib.util.find_spec(module)
    except Exception as error:  # noqa: BLE001 - a parent package that is missing or fails on import
        raise ModelError(f"{where}: cannot find module {module}: {type(error).__name__}: {error}") from None
    if spec is None:
        raise ModelError(f"{where}: no module named {module!r} on the Python path (add its folder to PYTHONPATH)")
    if not (spec.origin and spec.origin.endswith(".py")):
        raise ModelError(f"{where}: module {module} has no Python source file (found {spec.origin})")
    return Path(spec.origin)


_LOADED: dict[str, str] = {}  # module name -> digest of the file it was imported (or reloaded) from


def load_builder(path: str) -> Callable[..., Any]:
    """The function an import path names, from a module whose code is the file's current one.

    A long-lived process (a queue worker) may have imported an earlier version of the file: the
    hash names the file as it is now, so the module is reloaded when its file changed since.
    """
    source = read_source(path)
    try:
        module = importlib.import_module(source.module)
        if _LOADED.setdefault(source.module, source.digest) != source.digest:
            module = importlib.reload(module)
            _LOADED[source.module] = source.digest
    except Exception as error:  # noqa: BLE001 - the user's module failed while it was imported
        raise ModelError(f"model {path!r}: importing {source.module} failed: {type(error).__name__}: {error}") from None
    return getattr(module, source.function)

