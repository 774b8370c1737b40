"""Package exports imported on first use (PEP 562): `import adir_ops` costs nothing, `adir --help` never loads torch."""

from __future__ import annotations

from importlib import import_module


def lazy_exports(package: str, table: str):
    """(__getattr__, __all__) for `package` from a table of lines `module: name name alias=attribute ...`."""
    where: dict[str, tuple[str, str]] = {}
    for line in table.strip().splitlines():
        module, names = line.split(":", 1)
        for name in names.split():
            alias, _, attribute = name.partition("=")
            where[alias] = (module.strip(), attribute or alias)

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = where[name]
        return getattr(import_module(f"{package}.{module}"), attribute)

    return __getattr__, sorted(where)
