"""URLs of the demo page, included at the site root by ``example.urls``."""

from __future__ import annotations

from django.urls import URLPattern, path

from demo import views

app_name = "demo"

urlpatterns: list[URLPattern] = [
    path("", views.index, name="index"),
]
