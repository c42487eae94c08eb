"""The example's demo page: the bookstore, live in the browser, through Meteor's own client.

``/`` (``demo.urls``) renders one plain HTML page (``templates/demo/index.html``) whose
JavaScript (``static/demo/demo.js``, no build step) runs Meteor 1.3's client bundle from
npm (``demo.finders``) against the relay that serves it: the live book list, methods
with latency compensation, login, a book's chat and presence, the connection state.

Must not: import anything of ``django_app`` but its public API, or reach the relay in any
other way than the page's DDP connection (the relay serves this project as its fallback
WSGI app; the page speaks DDP to that same origin).
"""
