"""``MeteorIdField``: a primary key whose values are the ids Meteor clients expect.

Job: a 17-character string key drawn, while a DDP method runs, from that invocation's
seeded stream for the model's collection (``/collection/<name>``): so
``Book.objects.create(...)`` inside a method, and the ``/bookstore.book/insert`` mutator,
store the *same* id the client's stub generated, and the client's view does not flicker.
Outside a method (admin, shell, management commands) it draws a crypto-strong random id.
What must not live here: registry or stream logic beyond asking the current invocation.

An id is drawn when the instance is constructed (Django fills defaults in ``__init__``),
so construct only instances you are going to save, as Meteor's stub draws one per insert.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.expressions import Combinable

from django_app.context import current_method
from relay.protocol.alea import random_id

__all__ = ["MeteorIdField", "random_meteor_id"]

METEOR_ID_LENGTH = 17


def random_meteor_id() -> str:
    """A crypto-strong 17-character Meteor id (the default outside method invocations)."""
    return str(random_id(METEOR_ID_LENGTH))


# CharField is generic only in django-stubs (it cannot be subscripted at run time): the
# ``_pyi_private_*`` annotations below give its types, as django-stubs documents.
class MeteorIdField(models.CharField):  # type: ignore[type-arg]
    """``CharField(max_length=17)`` whose default is the next Meteor id (see module doc).

    Use as ``id = MeteorIdField(primary_key=True)``. It is not editable in forms (the
    admin never asks for an id).
    """

    description = "Meteor document id"
    # How django-stubs types the attribute on model instances (annotations only).
    _pyi_private_set_type: str | Combinable
    _pyi_private_get_type: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", METEOR_ID_LENGTH)
        kwargs.setdefault("default", random_meteor_id)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def get_default(self) -> Any:
        if self.default is random_meteor_id and self.primary_key:
            ctx = current_method()
            if ctx is not None and hasattr(self, "model"):
                return ctx.new_id(self.model)
        return super().get_default()

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        if kwargs.get("max_length") == METEOR_ID_LENGTH:
            del kwargs["max_length"]
        if kwargs.get("default") is random_meteor_id:
            del kwargs["default"]
        if kwargs.get("editable") is False:
            del kwargs["editable"]
        else:
            kwargs["editable"] = True
        return name, path, args, kwargs
