"""The module map of django_app (its package docstring): each module imports only modules
of lower layers, function-level imports included, so no two modules import each other in
a circle. Imports under ``TYPE_CHECKING`` do not count: they run only for mypy."""

from __future__ import annotations

import grimp
import pytest

#: Bottom to top, as ``django_app/__init__.py`` lists them; a module may import only
#: modules of earlier layers.
LAYERS: list[set[str]] = [
    {
        "conf",
        "channel",
        "exceptions",
        "cursor",
        "models",
        "signals",
        "streams",
        "ejson_types",
        "coroutines",
    },
    {
        "serializer",
        "signature",
        "ordering",
        "modifiers",
        "accounts.passwords",
        "accounts.tokens",
    },
    {"collection", "accounts.revocation"},
    {"mutator", "accounts.hashers", "accounts.users", "accounts.sessions"},
    {"registries"},
    {"context", "methods", "publications", "triggers", "checks"},
    {"fields", "changes", "events", "presence"},
    {"accounts.identity", "tracing"},
    {"accounts.authenticators", "accounts.methods", "trace_replay"},
    {
        "backend",
        "apps",
        "ddp",
        "admin",
        "management.commands.ddp_prune_changelog",
        "management.commands.ddp_sync_triggers",
        "management.commands.ddp_trace",
    },
]
#: Packages holding nothing but a docstring (the package's own lazy re-export uses
#: ``import_module``, which the import graph does not see), and the migrations, which
#: import Django only.
OFF_THE_MAP = (
    "django_app",
    "django_app.accounts",
    "django_app.management",
    "django_app.management.commands",
)


@pytest.fixture(scope="module")
def modules() -> dict[str, set[str]]:
    """Every mapped module of django_app and the django_app modules it imports."""
    # No cache: grimp shares its per-package cache files between graphs of different
    # package sets, and one can read the imports of a stale file.
    graph = grimp.build_graph("django_app", exclude_type_checking_imports=True, cache_dir=None)
    return {
        module: graph.find_modules_directly_imported_by(module)
        for module in graph.modules
        if module not in OFF_THE_MAP and not module.startswith("django_app.migrations")
    }


def _layer_of(module: str) -> int:
    name = module.removeprefix("django_app.")
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"{module} is not on the map: add it to LAYERS and the docstring")


def test_every_module_is_on_the_map(modules: dict[str, set[str]]) -> None:
    for module in modules:
        _layer_of(module)


def test_modules_import_only_lower_layers(modules: dict[str, set[str]]) -> None:
    upward = [
        f"{module} -> {imported}"
        for module, imports in modules.items()
        for imported in imports
        if imported in modules and _layer_of(imported) >= _layer_of(module)
    ]
    assert sorted(upward) == []


def test_the_registry_knows_declarations_only_by_protocol(
    modules: dict[str, set[str]],
) -> None:
    assert not modules["django_app.registries"] & {
        "django_app.methods",
        "django_app.publications",
        "django_app.context",
    }
