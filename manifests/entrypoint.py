"""Find a manifest's entrypoint in the plugin directory without running any of it (`host check`, and
`host install` before it builds anything): the module must be a file of the plugin (or may come from its
requirements), and a ``module:attr`` attribute must be bound at module level, where that can be told from
the source. Stdlib only (ast); importing is the sandboxed install check's job."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from manifests.errors import EntrypointNotFound
from manifests.model import Manifest

# What a plugin's venv always has besides its own requirements (the host's runtime).
RUNTIME_PACKAGES = frozenset({"flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker",
                              "gunicorn", "packaging", "plugin_base", "plugin_host_wsgi"})


def check_entrypoint(plugin_dir: Path, manifest: Manifest) -> str:
    """What could be verified, in words; raises EntrypointNotFound when the entrypoint cannot exist."""
    module, _, attr = manifest.entrypoint.partition(":")
    attr = attr.removesuffix("()")
    source = _module_file(plugin_dir, module)
    manifest_path = plugin_dir / "plugin.toml"
    if source is None:
        top = module.split(".")[0]
        if manifest.requirements or top in sys.stdlib_module_names or top in RUNTIME_PACKAGES:
            return f"module {module!r} is not in the plugin directory (from its requirements?): not verified"
        raise EntrypointNotFound(manifest_path, f"no module {module!r} in {plugin_dir} (looked for "
                                 f"{module.replace('.', '/')}.py and {module.replace('.', '/')}/__init__.py)",
                                 "entrypoint")
    shown = source.relative_to(plugin_dir)
    if not attr:
        return f"module {module!r} is {shown}"
    bound = _module_level_names(source)
    if bound is None:
        return f"module {module!r} is {shown}; whether it defines {attr!r} shows only on import"
    if attr not in bound:
        raise EntrypointNotFound(manifest_path, f"{shown} defines no {attr!r} at module level", "entrypoint")
    return f"module {module!r} is {shown} and defines {attr!r}"


def _module_file(plugin_dir: Path, module: str) -> Path | None:
    base = plugin_dir.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_level_names(source: Path) -> set[str] | None:
    """Names the module binds at its top level; None when that cannot be told without running it
    (unparsable, ``from x import *``, a module ``__getattr__``, writes through ``globals()``)."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError, OSError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("globals", "exec"):
            return None
    for node in _top_level(tree.body):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)):
            targets = [node.target] if isinstance(node, (ast.For, ast.AsyncFor)) else \
                [i.optional_vars for i in node.items if i.optional_vars is not None]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    for node in ast.walk(tree):  # walrus anywhere at module level binds a module name too
        if isinstance(node, ast.NamedExpr):
            names.add(node.target.id)
    return names


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at module level, including inside if/try/with/for blocks (not functions)."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.If, ast.For, ast.AsyncFor, ast.While)):
            out += _top_level(node.body) + _top_level(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            out += _top_level(node.body)
        elif isinstance(node, ast.Try):
            out += _top_level(node.body) + _top_level(node.orelse) + _top_level(node.finalbody)
            for handler in node.handlers:
                out += _top_level(handler.body)
    return out
