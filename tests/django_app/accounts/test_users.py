"""Users as Meteor sees them: lookups, the users document, its live changes, the null
publication."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.test.utils import isolate_apps

from django_app.accounts.users import (
    USER_PUBLICATION,
    find_user,
    own_user_cursors,
    users_collection_class,
)
from django_app.backend import DjangoBackend
from django_app.registries import registry
from relay.backend import ANONYMOUS, CallContext, Condition, Handshake, Identity
from relay.protocol.changestream import Change
from tests.django_app.changestream_helpers import flush_now, tx_changes
from tests.django_app.publishing import subscribe

pytestmark = pytest.mark.django_db

USERS = "ddp_auth_user"


@pytest.fixture
def people(db: None) -> dict[str, User]:
    return {
        "ann": User.objects.create_user("Ann", "ann@example.com", "x"),
        "bob": User.objects.create_user("bob", "Bob@Example.com", "x"),
        "bob2": User.objects.create_user("BOB", "shared@example.com", "x"),
        "cy": User.objects.create_user("cy", "shared@example.com", "x"),
    }


def test_find_user(people: dict[str, User]) -> None:
    assert find_user({"username": "Ann"}) == people["ann"]
    assert find_user({"username": "ann"}) == people["ann"]  # one case-insensitive match
    assert find_user({"username": "bob"}) == people["bob"]  # exact beats folded
    assert find_user({"username": "Bob"}) is None  # two folded matches: ambiguous
    assert find_user({"email": "bob@example.com"}) == people["bob"]
    assert find_user({"email": "shared@example.com"}) is None  # two exact: ambiguous
    assert find_user({"email": "nobody@example.com"}) is None
    assert find_user({"id": str(people["cy"].pk)}) == people["cy"]
    assert find_user({"id": "not-a-number"}) is None
    assert find_user({"id": "999999"}) is None


def test_the_users_document(reader: User, backend: DjangoBackend) -> None:
    collection = registry.get_collection("users")
    assert collection is not None and collection.model is User
    raw_id, fields = collection.serialize(reader)
    assert raw_id == str(reader.pk)  # Meteor's userId is a string
    assert fields == {
        "username": "reader",
        "emails": [{"address": "reader@example.com", "verified": False}],
        "profile": {},
    }
    reader.email = ""
    assert collection.serialize(reader)[1]["emails"] == []
    assert not {"password", "last_login", "is_staff"} & set(fields)


def test_live_changes_carry_the_computed_document(reader: User) -> None:
    collection = registry.get_collection("users")
    assert collection is not None
    flush_now()
    before = len(tx_changes(USERS))  # the reader's insert
    reader.email = "new@example.com"
    reader.save()
    flush_now()
    (change,) = tx_changes(USERS)[before:]
    decoded = collection.decode_change(change)
    assert (decoded.collection, decoded.id, decoded.op) == ("users", str(reader.pk), "u")
    assert decoded.fields == {
        "username": "reader",
        "emails": [{"address": "new@example.com", "verified": False}],
        "profile": {},
    }
    assert decoded.routing["id"] == reader.pk
    # Columns that are not published change nothing on the stream.
    reader.last_login = reader.date_joined
    reader.set_password("y")
    reader.save()
    flush_now()
    assert len(tx_changes(USERS)) == before + 1
    pk = reader.pk
    reader.delete()
    flush_now()
    gone = collection.decode_change(tx_changes(USERS)[-1])
    assert (gone.id, gone.op, gone.fields) == (str(pk), "d", {})


def test_a_decoded_change_missing_columns_leaves_their_fields_out() -> None:
    collection = registry.get_collection("users")
    assert collection is not None
    decoded = collection.decode_change(Change("u", 7, {"username": "x"}))
    assert decoded.fields == {"username": "x", "profile": {}}
    assert decoded.id == "7"


def test_configured_fields_profile_and_verified(settings: Any) -> None:
    with isolate_apps("django_app"):

        class Person(models.Model):
            handle = models.CharField(max_length=20)
            mail = models.EmailField(blank=True)
            confirmed = models.BooleanField(default=False)
            bio = models.JSONField(default=dict)
            nick = models.CharField(max_length=20, blank=True)
            team = models.ForeignKey(Group, null=True, on_delete=models.SET_NULL)
            password = models.CharField(max_length=128)
            USERNAME_FIELD = "handle"
            EMAIL_FIELD = "mail"

            class Meta:
                app_label = "ddp"

    settings.DDP_EMAIL_VERIFIED_FIELD = "confirmed"
    cls = users_collection_class(Person, extra={"team": "teamId"}, profile="bio")
    collection = cls()
    person = Person(pk=3, handle="h", mail="h@example.com", confirmed=True, bio={"a": 1})
    person.team_id = 9
    assert collection.serialize(person) == (
        "3",
        {
            "username": "h",
            "emails": [{"address": "h@example.com", "verified": True}],
            "profile": {"a": 1},
            "teamId": 9,
        },
    )
    mapped = users_collection_class(Person, extra=["nick"], profile={"name": "nick"})()
    assert mapped.serialize(person)[1]["profile"] == {"name": ""}
    assert mapped.serialize(person)[1]["nick"] == ""
    live = mapped.decode_change(
        Change("u", 3, {"handle": "h", "mail": "x@example.com", "confirmed": False, "nick": "N"})
    )
    assert live.fields == {
        "username": "h",
        "emails": [{"address": "x@example.com", "verified": False}],
        "profile": {"name": "N"},
        "nick": "N",
    }
    for bad, match in [
        ({"extra": ["password"]}, "never published"),
        ({"extra": ["id"]}, "_id"),
        ({"extra": ["nope"]}, "no field"),
        ({"extra": {"nick": "emails"}}, "computed"),
        ({"profile": "nope"}, "no field"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=match):
            users_collection_class(Person, **bad)
    settings.DDP_EMAIL_VERIFIED_FIELD = "handle"
    with pytest.raises(ImproperlyConfigured, match="no boolean field"):
        users_collection_class(Person)


def test_the_null_publication(reader: User, backend: DjangoBackend, handshake: Handshake) -> None:
    # The users publication first, then the project's own (the example's site notices).
    assert backend.universal_publications()[0] == USER_PUBLICATION
    assert own_user_cursors(None) == []
    anonymous = subscribe(backend, CallContext("s", ANONYMOUS, handshake), USER_PUBLICATION, [])
    assert (anonymous.documents, anonymous.routes) == ((), ())
    identity = Identity(user=reader, user_id=str(reader.pk))
    data = subscribe(backend, CallContext("s", identity, handshake), USER_PUBLICATION, [])
    (document,) = data.documents
    assert (document.collection, document.id) == ("users", str(reader.pk))
    assert document.fields["username"] == "reader"
    (route,) = data.routes
    assert (route.channel, route.collection) == (USERS, "users")
    assert route.conditions == (Condition("id", "exact", reader.pk),)  # routed in memory
    assert set(data.positions) == {USERS}


def test_login_service_configuration_is_ready_and_empty(
    backend: DjangoBackend, handshake: Handshake
) -> None:
    data = subscribe(
        backend, CallContext("s", ANONYMOUS, handshake), "meteor.loginServiceConfiguration", []
    )
    assert (data.documents, data.routes) == ((), ())


def test_no_universal_publication_when_accounts_are_off(
    backend: DjangoBackend, settings: Any
) -> None:
    settings.DDP_ACCOUNTS = False
    assert USER_PUBLICATION not in backend.universal_publications()
    from django_app.registries import Registry

    settings.DDP_ACCOUNTS = True
    assert DjangoBackend(registry=Registry()).universal_publications() == ()
