"""The demo page's one view: the HTML shell that loads Meteor's client and ``demo.js``.

Job: hand the template the bundles' static URLs (in load order) and what is missing, so a
page without ``npm ci`` says how to fix it instead of failing silently in the console.
Must not: query the database (the page's data comes over DDP, live) or set up the DDP
connection's URL from anything but the request's own origin (the page's script does).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.http import require_safe

from demo.finders import PREFIX, VENDOR_FILES, missing_vendor_files

__all__ = ["index"]


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    missing = missing_vendor_files()
    context = {
        "vendor_scripts": [static(f"{PREFIX}/{name}") for name in VENDOR_FILES],
        "missing_vendor": missing,
    }
    return render(request, "demo/index.html", context)
