"""The registry, the app config's autodiscovery and the lazy public API."""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Any

import pytest
from bookstore.models import Author, Book
from django.contrib.auth.models import Group

import django_app
from django_app import Collection, Cursor, Publication, method, publish, registry
from django_app.methods import Method
from django_app.mutator import Mutator
from django_app.registries import AlreadyRegistered, Registry


def test_bookstore_ddp_module_was_autodiscovered() -> None:
    names = {c.collection_name for c in registry.collections}
    assert {"bookstore.author", "bookstore.book"} <= names
    assert registry.has_publication("books.all")
    assert registry.has_publication("books.byAuthorEmail")
    for name in (
        "books.create",
        "books.rename",
        "books.setAuthor",
        "books.remove",
        "books.slowRename",
        "books.fail",
    ):
        assert registry.has_method(name)
    assert registry.collection_for_model(Book).collection_name == "bookstore.book"
    assert registry.get_collection("bookstore.author") is registry.collection_for_model(Author)


@pytest.mark.parametrize(
    "suffix", ["insert", "update", "remove", "insertAsync", "updateAsync", "removeAsync"]
)
def test_every_collection_answers_its_mutators(suffix: str) -> None:
    for collection in ("bookstore.book", "bookstore.author"):
        name = f"/{collection}/{suffix}"
        assert registry.has_method(name)
        mutator = registry.get_method(name)
        assert isinstance(mutator, Mutator)
        assert mutator.operation == suffix.removesuffix("Async")


@pytest.mark.parametrize(
    "name", ["/bookstore.book/upsert", "/nope/insert", "bookstore.book/insert", "/", "nope"]
)
def test_unknown_names(name: str) -> None:
    assert not registry.has_method(name)
    assert registry.get_method(name) is None
    assert not registry.has_publication(name)
    assert registry.get_publication(name) is None


def test_duplicates_are_refused() -> None:
    reg = Registry()

    class GroupCollection(Collection):
        model = Group

    class Again(Collection):
        model = Group
        name = "other"

    class SameName(Collection):
        model = Author
        name = "auth.group"

    reg.register(GroupCollection)
    with pytest.raises(AlreadyRegistered, match="one Collection per model"):
        reg.register(Again)
    with pytest.raises(AlreadyRegistered, match="already used"):
        reg.register(SameName)
    Publication("p", cursors=[Cursor(Group)], registry=reg)
    with pytest.raises(AlreadyRegistered):
        Publication("p", cursors=[], registry=reg)

    @method("m", registry=reg)
    def m(ctx: Any) -> None: ...

    with pytest.raises(AlreadyRegistered):
        method("m", registry=reg)(m)
    with pytest.raises(AlreadyRegistered, match="already registered"):
        method("/auth.group/insert", registry=reg)(m)
    reg.unregister(Group)
    method("/auth.group/insert", registry=reg)(m)
    with pytest.raises(AlreadyRegistered, match="clash with the mutators"):
        reg.register(GroupCollection)
    with pytest.raises(TypeError):
        reg.register(object)  # type: ignore[type-var]


def test_isolated_restores_everything() -> None:
    reg = Registry()
    with reg.isolated():

        class GroupCollection(Collection):
            model = Group

        reg.register(GroupCollection)

        @publish("pub", registry=reg)
        def pub(ctx: Any) -> None: ...

        assert reg.has_publication("pub")
        assert reg.has_method("/auth.group/insert")
    assert not reg.has_publication("pub")
    assert reg.collections == ()


def test_unregistered_model_is_a_configuration_error() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="not a published collection"):
        registry.collection_for_model(Group)


def test_method_objects() -> None:
    with pytest.raises(TypeError):
        Method("")
    with pytest.raises(NotImplementedError):
        Method("x").run(None, [])  # type: ignore[arg-type]
    assert repr(Method("x")) == "<Method 'x'>"


def test_public_api_names() -> None:
    for name in django_app.__all__:
        assert getattr(django_app, name) is not None
    assert django_app.registry is registry
    assert callable(django_app.method) and callable(django_app.publish)
    with pytest.raises(AttributeError):
        django_app.nope  # noqa: B018
    assert "Cursor" in dir(django_app)
    importlib.import_module("django_app.methods")
    assert django_app.method is method  # the submodule does not shadow the decorator


def test_import_before_setup_has_no_side_effects() -> None:
    code = (
        "import sys, django_app, django_app.backend;"
        "from django.apps import apps;"
        "assert not apps.ready;"
        "assert 'bookstore.models' not in sys.modules;"
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "", "PYTHONPATH": ":".join(sys.path)},
    )
    assert result.stdout.strip() == "ok", result.stderr
