"""Admin pages for authors, books, tags, favorites and site notices.

Must not hold anything but admin declarations."""

from __future__ import annotations

from django.contrib import admin

from bookstore.models import Author, Book, Favorite, Notice, Tag


class BookInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Book
    extra = 0
    # A tabular row has no room for the tag picker: tags are edited on the book's page.
    fields = ["title", "published", "price"]


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "email", "id"]
    search_fields = ["name", "email"]
    inlines = [BookInline]


@admin.register(Book)
class BookAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["title", "author", "published", "price", "updated_at", "id"]
    list_filter = ["author", "tags"]
    search_fields = ["title", "author__name", "tags__name"]
    readonly_fields = ["id", "updated_at"]
    filter_horizontal = ["tags"]


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "id"]
    search_fields = ["name"]
    readonly_fields = ["id"]


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


@admin.register(Notice)
class NoticeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["text", "active", "created_at"]
    list_filter = ["active"]
    readonly_fields = ["id", "created_at"]
