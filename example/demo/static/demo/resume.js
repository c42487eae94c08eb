/*
 * Session resumption for Meteor 1.3's client, the way Meteor 3.5's client does it.
 *
 * The only Meteor client bundle on npm (meteor-client-side 1.3.5) predates resumable
 * sessions: its `connect` carries the old `session` but not `receivedCount`, so the relay
 * cannot know what the client missed and always starts a new session (docs/architecture.md,
 * "Session resumption"); and when a server does answer with the same session, Meteor 1.3
 * still wipes its local collections at the next data message (its `_resetStores` flag),
 * although the server then sends only what changed. This file adds Meteor 3.5's two
 * client-side pieces and nothing else:
 *
 * - it counts the messages of the current session (ping and pong excluded, `connected`
 *   included; a new session starts again at 1) and sends that count as `receivedCount`
 *   in every `connect` that names a session;
 * - on a `connected` that resumes the same session, it keeps the local collections (the
 *   relay replays what was missed and sends the difference).
 *
 * Must not: change any other message, or claim a count it does not know (if a
 * `connected` went by before this file ran, it sends no count until the next new session,
 * and the relay answers with a new session, which is always correct).
 */
(function () {
  "use strict";

  var connection = Meteor.connection;
  var stream = connection._stream;
  var lastSession = connection._lastSessionId || null;
  var received = 0;
  var countKnown = lastSession === null;

  stream.on("message", function (raw) {
    var message;
    try {
      message = JSON.parse(raw);
    } catch (e) {
      return;
    }
    if (!message || message.msg === "ping" || message.msg === "pong") return;
    if (message.msg !== "connected") {
      received += 1;
      return;
    }
    // Meteor's own handler has run already (it was registered first) and set its
    // `_resetStores` for any reconnect; a resume must keep what the page holds.
    var resumed = lastSession !== null && message.session === lastSession;
    lastSession = message.session;
    if (resumed) {
      received += 1;
      connection._resetStores = false;
    } else {
      received = 1;
      countKnown = true;
    }
  });

  var send = stream.send;
  stream.send = function (raw) {
    if (countKnown && raw.indexOf('"connect"') !== -1) {
      var message = JSON.parse(raw);
      if (message.msg === "connect" && typeof message.session === "string") {
        message.receivedCount = received;
        raw = JSON.stringify(message);
      }
    }
    return send.call(stream, raw);
  };
})();
