"""Authors, books and users' favorite books. All use Meteor ids, so client stubs and the
server agree on ids."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from django_app import MeteorIdField


class Author(models.Model):
    id = MeteorIdField(primary_key=True)
    name = models.CharField(max_length=200)
    email = models.EmailField(unique=True)

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
    tags = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

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
