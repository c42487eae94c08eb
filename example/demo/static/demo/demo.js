/*
 * The demo page's logic: plain JavaScript on Meteor 1.3's client (meteor-client-side),
 * no build step. It subscribes to the bookstore's publications over the page's DDP
 * connection (SockJS to this page's origin), renders what Minimongo holds, and calls the
 * bookstore's methods with client stubs, so an edit shows at once and the server's
 * answer then replaces the guess (latency compensation).
 *
 * What the page shows and the tests read (tests/e2e/test_browser.py), as DOM state:
 * #status[data-state] (Meteor.status().status; "waiting" carries the next retry time),
 * #session[data-kind] ("new", "resumed"), #transport[data-transport] (the SockJS
 * transport), #books > li[data-id][data-pending] with .title, and the forms' results.
 *
 * Session resumption's client half (Meteor 3.5's receivedCount) is resume.js's.
 *
 * Must not: talk to the server in any other way than Meteor's connection, or change a
 * document locally outside a method stub (the server's copy must always win).
 */
(function () {
  "use strict";

  var $ = function (id) {
    return document.getElementById(id);
  };
  var Books = new Mongo.Collection("bookstore.book");
  var Authors = new Mongo.Collection("bookstore.author");
  var Chat = new Mongo.Collection("chat");
  var Presence = new Mongo.Collection("presence");
  var connection = Meteor.connection;
  var stream = connection._stream;

  // What the page keeps for itself (and for anyone poking at it in the console).
  var state = {
    pending: {}, // book id -> "creating" | "renaming": a stub's guess the server has not confirmed
    sessions: [], // every DDP session id this page was handed, in order
    selected: null, // the book whose chat and presence are shown
    retryTime: null,
  };
  var pendingChanged = new Tracker.Dependency();
  var selectedChanged = new Tracker.Dependency();
  window.demo = { Books: Books, Authors: Authors, Chat: Chat, Presence: Presence, state: state };

  // --- Client stubs: run at once in the browser, with the same randomSeed as the call ---

  Meteor.methods({
    "books.rename": function (bookId, title) {
      Books.update(bookId, { $set: { title: String(title).trim() } });
    },
    "books.create": function (doc) {
      // Books.insert in a stub draws the id from the call's randomSeed stream, so the
      // server's MeteorIdField draws the very same id: the guess keeps its identity.
      return Books.insert({
        title: String(doc.title).trim(),
        authorId: doc.authorId,
        price: Number(doc.price).toFixed(2),
        published: null,
        tags: [],
        details: {},
        ratings: [],
        updatedAt: new Date(),
      });
    },
  });

  function setPending(id, what) {
    if (what) state.pending[id] = what;
    else delete state.pending[id];
    pendingChanged.changed();
  }

  function errorText(err) {
    if (!err) return "";
    return err.reason || err.message || String(err.error || err);
  }

  function say(id, text, kind) {
    var el = $(id);
    el.textContent = text;
    el.dataset.kind = kind || "info";
  }

  // --- Subscriptions ---

  var booksHandle = Meteor.subscribe("books.all");
  var chatHandle = null;
  var presenceHandle = null;

  function selectBook(id) {
    if (state.selected === id) return;
    state.selected = id;
    if (chatHandle) chatHandle.stop();
    if (presenceHandle) presenceHandle.stop();
    chatHandle = id ? Meteor.subscribe("chat.byBook", id) : null;
    presenceHandle = id ? Meteor.subscribe("presence.book", id) : null;
    if (id) $("rename-book").value = id;
    selectedChanged.changed();
  }

  // --- Rendering: each autorun re-renders its part when what it read changes ---

  function authorName(authorId) {
    var author = Authors.findOne(authorId);
    return author ? author.name : "unknown author";
  }

  function bookItem(existing, book) {
    var li = existing || document.createElement("li");
    if (!existing) {
      li.innerHTML =
        '<span class="title"></span> <span class="author"></span> ' +
        '<span class="price"></span> <span class="badge"></span>';
      li.addEventListener("click", function () {
        selectBook(li.dataset.id);
      });
    }
    li.dataset.id = book._id;
    li.dataset.pending = state.pending[book._id] || "";
    li.classList.toggle("selected", state.selected === book._id);
    li.querySelector(".title").textContent = book.title;
    li.querySelector(".author").textContent = "by " + authorName(book.authorId);
    li.querySelector(".price").textContent = book.price ? "$" + book.price : "";
    li.querySelector(".badge").textContent = state.pending[book._id] ? "saving…" : "";
    return li;
  }

  function fillSelect(select, docs, label) {
    var keep = select.value;
    var options = docs.map(function (doc) {
      var option = document.createElement("option");
      option.value = doc._id;
      option.textContent = label(doc);
      return option;
    });
    select.replaceChildren.apply(select, options);
    if (keep && docs.some(function (doc) { return doc._id === keep; })) select.value = keep;
  }

  Tracker.autorun(function () {
    pendingChanged.depend();
    selectedChanged.depend();
    var books = Books.find({}, { sort: { title: 1, _id: 1 } }).fetch();
    var list = $("books");
    var byId = {};
    Array.prototype.forEach.call(list.children, function (li) {
      byId[li.dataset.id] = li;
    });
    // Keyed: an element stays the same node while its book lives, whatever changes.
    list.replaceChildren.apply(
      list,
      books.map(function (book) {
        return bookItem(byId[book._id], book);
      }),
    );
    $("book-count").textContent = "(" + books.length + ")";
    $("books-loading").hidden = booksHandle.ready();
    fillSelect($("rename-book"), books, function (book) {
      return book.title;
    });
  });

  Tracker.autorun(function () {
    var authors = Authors.find({}, { sort: { name: 1 } }).fetch();
    fillSelect($("create-author"), authors, function (author) {
      return author.name;
    });
  });

  Tracker.autorun(function () {
    selectedChanged.depend();
    var id = state.selected;
    var book = id && Books.findOne(id);
    $("chat-book").textContent = book ? book.title : "(pick a book in the list)";
    var me = Meteor.userId && Meteor.userId();
    var messages = id ? Chat.find({ bookId: id }, { sort: { createdAt: 1 } }).fetch() : [];
    $("chat").replaceChildren.apply(
      $("chat"),
      messages.map(function (message) {
        var li = document.createElement("li");
        var who = message.userId === me ? "you" : "user " + message.userId;
        li.textContent = who + ": " + message.text;
        return li;
      }),
    );
    var here = id ? Presence.find({ topic: "book:" + id }).fetch() : [];
    var users = here.filter(function (p) { return p.userId; }).map(function (p) {
      return p.userId === me ? "you" : "user " + p.userId;
    });
    var anonymous = here.length - users.length;
    if (anonymous) users.push(anonymous + " anonymous");
    $("presence").textContent = users.length ? users.join(", ") : "nobody";
  });

  // --- Forms ---

  $("rename-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var id = $("rename-book").value;
    var title = $("rename-title").value;
    if (!id) return;
    setPending(id, "renaming");
    say("rename-result", "Renaming…");
    Meteor.call("books.rename", id, title, function (err) {
      setPending(id, null);
      if (err) say("rename-result", "Not renamed: " + errorText(err), "error");
      else say("rename-result", "Renamed to “" + title.trim() + "”.", "ok");
    });
  });

  $("create-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var doc = {
      title: $("create-title").value,
      authorId: $("create-author").value,
      price: Number($("create-price").value).toFixed(2),
    };
    var result = $("create-result");
    var stubId = Meteor.apply("books.create", [doc], { returnStubValue: true }, function (err, id) {
      setPending(stubId, null);
      result.dataset.serverId = id || "";
      if (err) {
        say("create-result", "Not added: " + errorText(err), "error");
      } else {
        var same = id === stubId ? "the id the page guessed" : "a different id than guessed";
        say("create-result", "Added “" + doc.title.trim() + "” as " + id + " (" + same + ").", "ok");
      }
    });
    result.dataset.stubId = stubId || "";
    result.dataset.serverId = "";
    if (stubId) setPending(stubId, "creating");
    say("create-result", "Adding…");
  });

  var accounts = typeof Meteor.loginWithPassword === "function";
  Tracker.autorun(function () {
    if (!accounts) {
      $("user").textContent = "This client bundle has no accounts packages.";
      $("login-fields").hidden = true;
      return;
    }
    var userId = Meteor.userId();
    var user = Meteor.user();
    $("user").textContent = userId
      ? "Logged in as " + (user && user.username ? user.username : "user " + userId) + "."
      : Meteor.loggingIn()
        ? "Logging in…"
        : "Not logged in.";
    $("user").dataset.userId = userId || "";
    $("login-fields").hidden = Boolean(userId);
    $("logout").hidden = !userId;
  });

  $("login-form").addEventListener("submit", function (event) {
    event.preventDefault();
    say("login-result", "");
    Meteor.loginWithPassword($("login-user").value, $("login-password").value, function (err) {
      $("login-password").value = "";
      if (err) say("login-result", "Login failed: " + errorText(err), "error");
    });
  });
  $("logout").addEventListener("click", function () {
    Meteor.logout();
  });

  $("chat-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var text = $("chat-text").value;
    if (!state.selected) {
      say("chat-result", "Pick a book first.", "error");
      return;
    }
    Meteor.call("chat.post", state.selected, text, function (err) {
      if (err && err.error === "not-authorized") say("chat-result", "Log in to chat.", "error");
      else if (err) say("chat-result", "Not sent: " + errorText(err), "error");
      else {
        $("chat-text").value = "";
        say("chat-result", "");
      }
    });
  });

  // --- Connection: state, next retry, session resumed or new, transport ---

  function describeStatus() {
    var status = Meteor.status();
    var el = $("status");
    var everConnected = state.sessions.length > 0;
    el.dataset.state = status.status;
    el.dataset.retryCount = String(status.retryCount || 0);
    state.retryTime = status.retryTime || null;
    if (status.status === "connected") {
      el.textContent = "connected";
    } else if (status.status === "connecting") {
      el.textContent = everConnected ? "reconnecting…" : "connecting…";
    } else if (status.status === "waiting") {
      var seconds = Math.max(0, Math.ceil((status.retryTime - Date.now()) / 1000));
      el.textContent =
        "reconnecting in " + seconds + " s (attempt " + (status.retryCount + 1) + ")";
    } else {
      el.textContent = status.status + (status.reason ? ": " + status.reason : "");
    }
  }
  Tracker.autorun(describeStatus);
  // The countdown moves every second while waiting; Meteor.status() itself does not change.
  setInterval(function () {
    if (Meteor.status().status === "waiting") Tracker.nonreactive(describeStatus);
  }, 1000);

  function noteConnected(message) {
    var previous = state.sessions[state.sessions.length - 1];
    state.sessions.push(message.session);
    var kind = previous === undefined ? "new" : previous === message.session ? "resumed" : "new";
    var el = $("session");
    el.dataset.kind = kind;
    el.dataset.session = message.session;
    el.dataset.connects = String(state.sessions.length);
    if (previous === undefined) el.textContent = "session " + message.session;
    else if (kind === "resumed") el.textContent = "session " + message.session + " resumed";
    else el.textContent = "new session " + message.session + " (the old one had ended)";
    var socket = stream.socket;
    var transport = (socket && socket.protocol) || "unknown";
    $("transport").dataset.transport = transport;
    $("transport").textContent = "over SockJS " + transport;
  }

  var wire = [];
  function logWire(direction, raw) {
    wire.push(direction + " " + (raw.length > 300 ? raw.slice(0, 300) + "…" : raw));
    if (wire.length > 30) wire.shift();
  }
  setInterval(function () {
    var list = $("wire");
    if (!list.parentNode.open) return;
    list.replaceChildren.apply(
      list,
      wire.map(function (line) {
        var li = document.createElement("li");
        li.textContent = line;
        return li;
      }),
    );
  }, 1000);

  stream.on("message", function (raw) {
    logWire("←", raw);
    var message;
    try {
      message = JSON.parse(raw);
    } catch (e) {
      return;
    }
    if (message && message.msg === "connected") noteConnected(message);
  });
  var send = stream.send.bind(stream);
  stream.send = function (raw) {
    logWire("→", raw);
    send(raw);
  };
  // A `connected` that arrived while the browser was still loading the scripts after
  // Meteor's bundle went by unseen: start from the session Meteor already has.
  if (connection._lastSessionId) noteConnected({ session: connection._lastSessionId });

  // ?transports=xhr-streaming,xhr-polling limits the SockJS transports the client may
  // use (SockJS's protocols_whitelist), e.g. to try the HTTP fallbacks a network without
  // WebSockets gets. Meteor's own default is websocket, then the polling transports.
  var only = new URLSearchParams(window.location.search).get("transports");
  if (only) {
    stream.options._sockjsOptions = { protocols_whitelist: only.split(",") };
    stream.reconnect({ _force: true });
  }
})();
