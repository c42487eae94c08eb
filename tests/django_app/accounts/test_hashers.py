"""MeteorPBKDF2PasswordHasher: Django's PBKDF2 over Meteor's digest, and its upgrades."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import (
    PBKDF2PasswordHasher,
    check_password,
    identify_hasher,
    make_password,
)
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured

from django_app.accounts import hashers
from django_app.accounts.hashers import (
    MeteorPBKDF2PasswordHasher,
    check_user_password,
    make_password_from_digest,
    meteor_hasher,
    set_user_password,
    verify_digest,
)
from django_app.accounts.passwords import meteor_digest, parse_password
from tests.django_app.accounts.helpers import (
    FastMeteorPBKDF2PasswordHasher,
    digest,
    token_ids,
)

PASSWORD = "s3cret-Tök 😀"


def test_encode_is_pbkdf2_over_the_digest() -> None:
    hasher = MeteorPBKDF2PasswordHasher()
    encoded = hasher.encode(PASSWORD, "salt1234", 1000)
    assert encoded.startswith("ddp_meteor_pbkdf2_sha256$1000$salt1234$")
    # Exactly Django's PBKDF2 of the digest: storage as strong as Django's own.
    plain = PBKDF2PasswordHasher().encode(meteor_digest(PASSWORD), "salt1234", 1000)
    assert encoded.split("$", 1)[1] == plain.split("$", 1)[1]
    assert hasher.verify(PASSWORD, encoded)
    assert not hasher.verify(PASSWORD + " ", encoded)
    assert hasher.verify_digest(meteor_digest(PASSWORD), encoded)
    assert not hasher.verify_digest(meteor_digest("other"), encoded)
    assert hasher.iterations == PBKDF2PasswordHasher.iterations
    with pytest.raises(TypeError):
        hasher.encode(None, "salt")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hasher.encode(PASSWORD, "bad$salt")


def test_django_login_and_digests_verify_the_same_hash() -> None:
    encoded = make_password(PASSWORD)  # the suite's first hasher: the fast Meteor one
    assert identify_hasher(encoded).algorithm == "ddp_meteor_pbkdf2_sha256"
    assert check_password(PASSWORD, encoded)
    assert verify_digest(meteor_digest(PASSWORD), encoded)
    assert not verify_digest(meteor_digest("nope"), encoded)
    from_digest = make_password_from_digest(meteor_digest(PASSWORD))
    assert check_password(PASSWORD, from_digest)  # Django's login takes a digest-set one
    assert verify_digest(meteor_digest(PASSWORD), from_digest)


def test_verify_digest_refuses_other_hashes() -> None:
    md5 = make_password(PASSWORD, hasher="md5")
    assert not verify_digest(meteor_digest(PASSWORD), md5)
    assert not verify_digest(meteor_digest(PASSWORD), make_password(None))
    assert not verify_digest(meteor_digest(PASSWORD), "")
    assert not verify_digest(meteor_digest(PASSWORD), None)
    assert not verify_digest(meteor_digest(PASSWORD), "argon2$x$y$z")  # not installed


def test_meteor_hasher_and_missing_hasher(settings: Any) -> None:
    assert isinstance(meteor_hasher(), FastMeteorPBKDF2PasswordHasher)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    assert meteor_hasher() is None
    with pytest.raises(ImproperlyConfigured, match="MeteorPBKDF2PasswordHasher"):
        make_password_from_digest(meteor_digest(PASSWORD))


@pytest.mark.django_db
def test_plain_login_upgrades_an_older_hash_without_revoking(reader: User) -> None:
    from django_app.accounts.tokens import issue_token

    reader.password = make_password(PASSWORD, hasher="md5")
    reader.save()
    issue_token(reader)
    before = token_ids(reader)
    # A digest cannot be checked against MD5: refused.
    assert not check_user_password(reader, parse_password(digest(PASSWORD)))
    # The plain password verifies and upgrades the stored hash to the Meteor hasher.
    assert check_user_password(reader, parse_password(PASSWORD))
    reader.refresh_from_db()
    assert identify_hasher(reader.password).algorithm == "ddp_meteor_pbkdf2_sha256"
    assert token_ids(reader) == before  # a re-hash is not a password change
    assert check_user_password(reader, parse_password(digest(PASSWORD)))
    assert not check_user_password(reader, parse_password("wrong"))
    assert not check_user_password(reader, parse_password(digest("wrong")))


@pytest.mark.django_db
def test_djangos_own_login_upgrades_too(reader: User) -> None:
    reader.password = make_password(PASSWORD, hasher="md5")
    reader.save()
    assert authenticate(username="reader", password=PASSWORD) == reader
    reader.refresh_from_db()
    assert verify_digest(meteor_digest(PASSWORD), reader.password)


@pytest.mark.django_db
def test_a_digest_upgrades_the_iteration_count(reader: User) -> None:
    reader.password = MeteorPBKDF2PasswordHasher().encode(PASSWORD, "salt1234", 2)
    reader.save()
    assert check_user_password(reader, parse_password(digest(PASSWORD)))
    reader.refresh_from_db()
    hasher = FastMeteorPBKDF2PasswordHasher()
    assert hasher.decode(reader.password)["iterations"] == 1
    assert check_password(PASSWORD, reader.password)


@pytest.mark.django_db
def test_a_predating_hash_is_logged_once(reader: User, caplog: Any) -> None:
    reader.password = make_password(PASSWORD, hasher="md5")
    reader.save()
    hashers._predates_logged.discard(reader.pk)
    with caplog.at_level(logging.INFO, logger="django_app.accounts"):
        for _ in range(3):
            assert not check_user_password(reader, parse_password(digest(PASSWORD)))
    lines = [r for r in caplog.records if "predates" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert PASSWORD not in caplog.text and meteor_digest(PASSWORD) not in caplog.text


@pytest.mark.django_db
def test_set_user_password(reader: User) -> None:
    set_user_password(reader, parse_password(digest("from a digest")))
    assert reader.check_password("from a digest")
    set_user_password(reader, parse_password("from plain"))
    assert reader.check_password("from plain")
    assert not reader.check_password("from a digest")


@pytest.mark.django_db
def test_a_digest_against_an_old_hash_costs_a_hashing_anyway(monkeypatch: Any) -> None:
    # Found in review: refusing at once told "exists, old hash" from "unknown user" (which
    # pays a hashing) by the answer's speed, whatever the error message says.
    spent: list[Any] = []
    monkeypatch.setattr(hashers, "run_hasher_once", spent.append)
    user = User.objects.create(username="old-hash", password=make_password(PASSWORD, hasher="md5"))
    password = parse_password({"digest": meteor_digest(PASSWORD), "algorithm": "sha-256"})
    assert not hashers.check_user_password(user, password)
    assert spent == [password]
