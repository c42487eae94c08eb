"""Authors, books, tags and users' favorite books. All use Meteor ids, so client stubs and
the server agree on ids.

Must not hold publishing rules (``bookstore.ddp``) or demo data (``seed_demo``)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from django_app import MeteorIdField

#: The longest tag name, in characters.
TAG_NAME_MAX_LENGTH = 100


class Author(models.Model):
    id = MeteorIdField(primary_key=True)
    name = models.CharField(max_length=200)
    email = models.EmailField(unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    """A label on books, named uniquely; books publish their tags' names (``bookstore.ddp``)."""

    id = MeteorIdField(primary_key=True)
    name = models.CharField(max_length=TAG_NAME_MAX_LENGTH, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Book(models.Model):
    id = MeteorIdField(primary_key=True)
    title = models.CharField(max_length=300)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    published = models.DateField(null=True, blank=True)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    tags = models.ManyToManyField(Tag, related_name="books", blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    #: Free-form facts about the book (publisher, counters...): a JSON document Meteor
    #: clients write into by dotted path (``$set: {"details.publisher.city": ...}``).
    details = models.JSONField(default=dict, blank=True)
    #: Readers' ratings, 1 to 5 (``$push``, ``$addToSet``, ``$pull`` from the client).
    ratings = ArrayField(
        models.IntegerField(validators=[MinValueValidator(1), MaxValueValidator(5)]),
        default=list,
        blank=True,
    )

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title


class Favorite(models.Model):
    """A book a user marked: one row per (user, book). Its Meteor id is drawn from the
    method's seeded stream, so the client stub's ``insert`` gets the same id."""

    id = MeteorIdField(primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="favorites"
    )
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="favorites")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "book"], name="bookstore_favorite_once"),
        ]

    def __str__(self) -> str:
        return f"{self.user} likes {self.book}"


class Notice(models.Model):
    """A site notice every connected client sees while it is active (the example's
    universal publication: no client subscribes to it)."""

    id = MeteorIdField(primary_key=True)
    text = models.CharField(max_length=500)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text
