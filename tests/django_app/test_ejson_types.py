"""Custom EJSON types: ``ejson_type(name, decode)`` teaches the relay's EJSON layer a type,
so that a client's ``{"$type": name, "$value": v}`` reaches a method as the project's
object (parsed by the relay's own message parser, then run by ``DjangoBackend.call``); a
bad value, a failing decoder or an unknown type is a DDP error, never a 500."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

import django_app
from django_app import DDPError, MethodContext, method
from django_app.backend import DjangoBackend
from django_app.ejson_types import ejson_type
from django_app.registries import Registry
from relay.backend import ClientError
from relay.protocol import ejson, messages
from relay.protocol.ejson import CustomType
from relay.protocol.errors import RemoteProtocolError


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


class Bill(TypedDict):
    total: Money
    lines: list[Money]


def decode_money(value: Any) -> Money:
    if not isinstance(value, dict) or set(value) != {"amount", "currency"}:
        raise ValueError("Money is {amount, currency}")
    amount, currency = value["amount"], value["currency"]
    if not isinstance(amount, str) or not isinstance(currency, str) or len(currency) != 3:
        raise TypeError("Money needs a decimal string and a 3-letter currency")
    return Money(Decimal(amount), currency)  # "x": InvalidOperation, an ArithmeticError


def decode_coupon(value: Any) -> str:
    raise DDPError(400, "Coupons are not accepted")


def decode_broken(value: Any) -> Any:
    raise RuntimeError("internal detail a client must not read")


@pytest.fixture(autouse=True, scope="module")
def _types() -> None:
    # The relay's table is per process and has no removal: registering again is a no-op.
    ejson_type("test.Money", decode_money)
    ejson_type("test.Coupon", decode_coupon)
    ejson_type("test.Broken", decode_broken)


def wire(params: list[Any]) -> tuple[Any, ...]:
    """Plain JSON ``params`` as the relay parses a ``method`` message holding them."""
    text = json.dumps({"msg": "method", "id": "1", "method": "pay", "params": params})
    msg = messages.parse_client_message(messages.parse_json(text), "1")
    assert isinstance(msg, messages.Method)
    return msg.params


def parse_error(params: list[Any]) -> str:
    """The ``reason`` of the top-level error the relay answers such a message with."""
    with pytest.raises(RemoteProtocolError) as info:
        wire(params)
    assert info.value.reply is not None and info.value.reply["msg"] == "error"
    reason = info.value.reply["reason"]
    assert isinstance(reason, str)
    return reason


def money(amount: str, currency: str = "EUR") -> dict[str, Any]:
    return {"$type": "test.Money", "$value": {"amount": amount, "currency": currency}}


@pytest.fixture
def payments() -> tuple[DjangoBackend, list[tuple[Any, ...]]]:
    reg = Registry()
    received: list[tuple[Any, ...]] = []

    @method("pay", registry=reg)
    def pay(ctx: MethodContext, total: Money, bill: Bill, anything: Any = None) -> str:
        received.append((total, bill, anything))
        return f"{total.amount} {total.currency}"

    return DjangoBackend(registry=reg), received


@pytest.mark.django_db
def test_a_registered_type_reaches_the_method_as_its_class(
    payments: tuple[DjangoBackend, list[tuple[Any, ...]]], make_ctx: Any
) -> None:
    backend, received = payments
    params = wire(
        [
            money("12.50"),
            {"total": money("3"), "lines": [money("1", "USD"), money("2")]},
            [money("0.5", "GBP")],
        ]
    )
    assert backend.call(make_ctx(), "pay", params).result == "12.50 EUR"
    assert received == [
        (
            Money(Decimal("12.50"), "EUR"),
            {
                "total": Money(Decimal(3), "EUR"),
                "lines": [Money(Decimal(1), "USD"), Money(Decimal(2), "EUR")],
            },
            [Money(Decimal("0.5"), "GBP")],
        )
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params",
    [
        [{"amount": "12.50", "currency": "EUR"}, {"total": money("1"), "lines": []}],
        [money("1"), {"total": {"amount": "1", "currency": "EUR"}, "lines": []}],
        [money("1"), {"total": money("1"), "lines": [1]}],
        ["12.50", {"total": money("1"), "lines": []}],
    ],
)
def test_anything_else_where_the_class_is_annotated_is_match_failed(
    payments: tuple[DjangoBackend, list[tuple[Any, ...]]], make_ctx: Any, params: list[Any]
) -> None:
    backend, received = payments
    with pytest.raises(ClientError) as info:
        backend.call(make_ctx(), "pay", wire(params))
    assert (info.value.error, info.value.reason) == (400, "Match failed")
    assert received == []


@pytest.mark.django_db
def test_an_unknown_type_never_reaches_a_method(
    payments: tuple[DjangoBackend, list[tuple[Any, ...]]], make_ctx: Any
) -> None:
    """The relay refuses it while parsing, as Meteor does ("Parse error"); a
    ``CustomType`` (what the relay would hand over for a type it kept undecoded) is 400
    "Match failed" whatever the annotation, ``Any`` included."""
    reason = parse_error([{"$type": "test.Nope", "$value": 1}])
    assert reason == "Parse error: Custom EJSON type test.Nope is not defined"
    backend, received = payments
    bill = {"total": Money(Decimal(1), "EUR"), "lines": []}
    for params in (
        [CustomType("test.Nope", 1), bill],
        [Money(Decimal(1), "EUR"), bill, {"deep": [CustomType("test.Nope", {})]}],
    ):
        with pytest.raises(ClientError) as info:
            backend.call(make_ctx(), "pay", params)
        assert (info.value.error, info.value.reason) == (400, "Match failed")
    assert received == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (money("x"), "Parse error: invalid value for EJSON type test.Money: "),
        (money("1", "EURO"), "Parse error: invalid value for EJSON type test.Money: Money needs"),
        (
            {"$type": "test.Money", "$value": [1]},
            "Parse error: invalid value for EJSON type test.Money: Money is {amount, currency}",
        ),
        (
            {"$type": "test.Coupon", "$value": "FREE"},
            "Parse error: invalid value for EJSON type test.Coupon: Coupons are not accepted",
        ),
    ],
)
def test_a_value_the_decoder_refuses_is_a_parse_error(value: Any, reason: str) -> None:
    assert parse_error([value]).startswith(reason)


def test_a_failing_decoder_is_logged_and_tells_the_client_nothing_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="django_app.ejson_types"):
        reason = parse_error([{"$type": "test.Broken", "$value": 1}])
    assert reason == "Parse error: invalid value for EJSON type test.Broken"
    (record,) = caplog.records
    assert record.exc_info is not None and "internal detail" in str(record.exc_info[1])


def test_registration_rules() -> None:
    for name in ("", 5, None):
        with pytest.raises(TypeError, match="non-empty string"):
            ejson_type(name, decode_money)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be callable"):
        ejson_type("test.Other", "decode")  # type: ignore[arg-type]
    for builtin in ("Decimal", "oid"):
        with pytest.raises(ValueError, match="already registered"):
            ejson_type(builtin, decode_money)
    with pytest.raises(ValueError, match=r"already registered, by .*decode_money"):
        ejson_type("test.Money", decode_coupon)
    assert django_app.ejson_type is ejson_type


def test_the_same_decoder_again_replaces_itself() -> None:
    """A module imported twice defines its decoder twice: the second registration is the
    same one (module and qualified name), and the newer function decodes."""

    def newer(value: Any) -> Money:
        return Money(Decimal(0), "XXX")

    newer.__module__, newer.__qualname__ = decode_money.__module__, decode_money.__qualname__
    try:
        ejson_type("test.Money", newer)
        assert wire([money("5")]) == (Money(Decimal(0), "XXX"),)
    finally:
        ejson_type("test.Money", decode_money)
    assert wire([money("5")]) == (Money(Decimal(5), "EUR"),)


@given(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3),
)
def test_any_money_a_client_encodes_arrives_equal(amount: Decimal, currency: str) -> None:
    """Encoded as a client encodes a custom type, it decodes to the same object."""
    sent = CustomType("test.Money", {"amount": str(amount), "currency": currency})
    (got,) = wire(ejson.to_json_value([sent]))
    assert got == Money(amount, currency)
    assert got.amount.as_tuple() == amount.as_tuple()
