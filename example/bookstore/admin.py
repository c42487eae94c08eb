"""Admin pages for authors, books and favorites."""

from __future__ import annotations

from django.contrib import admin

from bookstore.models import Author, Book, Favorite


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


@admin.register(Favorite)
class FavoriteAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["user", "book", "id"]
    list_filter = ["user"]
    search_fields = ["user__username", "book__title"]
    list_select_related = ["user", "book"]
    # Pickers that search instead of a <select> of every user and book.
    autocomplete_fields = ["book"]
    raw_id_fields = ["user"]
    readonly_fields = ["id"]
