"""Admin pages for authors and books."""

from __future__ import annotations

from django.contrib import admin

from bookstore.models import Author, Book


class BookInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Book
    extra = 0
    fields = ["title", "published", "price", "tags"]


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "email", "id"]
    search_fields = ["name", "email"]
    inlines = [BookInline]


@admin.register(Book)
class BookAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["title", "author", "published", "price", "updated_at", "id"]
    list_filter = ["author"]
    search_fields = ["title", "author__name"]
    readonly_fields = ["id", "updated_at"]
