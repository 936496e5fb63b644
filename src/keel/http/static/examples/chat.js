// keel's example page: a browser session (HttpOnly cookies), EventSource or WebSocket, fetch with X-CSRF-Token.
// No framework, no build step. `?transport=ws` uses a WebSocket instead of EventSource.
"use strict";

const API = "/api/v1";
const $ = (selector) => document.querySelector(selector);
const transport = new URLSearchParams(location.search).get("transport") === "ws" ? "ws" : "sse";

// What the page has shown, for a person and for keel's browser tests.
const chat = (window.keelChat = { transport, channel: null, seqs: [], position: null, opened: 0, reopenedByScript: 0 });
let feed = null; // the open EventSource or WebSocket

function csrfToken() {
  // keel_csrf is the one session cookie a script can read; it goes back in X-CSRF-Token on unsafe methods
  const found = document.cookie.split("; ").find((c) => c.startsWith("keel_csrf="));
  return found ? decodeURIComponent(found.slice("keel_csrf=".length)) : "";
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    const error = new Error(problem.detail || `${method} ${path}: ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

function showError(error) {
  $("#error").textContent = error ? String(error.message || error) : "";
}

function notice(text) {
  $("#notice").textContent = text || "";
}

function setStatus(text) {
  $("#status").textContent = text;
}

// A link from a reset or verification mail: the token travels in the fragment, which the browser never sends to
// a server (no access log, no Referer holds it); it leaves the address bar at once.
function mailedToken() {
  const match = /^#(password-reset|verify-email)=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (match) history.replaceState(null, "", location.pathname + location.search);
  return match ? { kind: match[1], token: match[2] } : null;
}

let resetToken = null;

async function start() {
  const mailed = mailedToken();
  if (mailed && mailed.kind === "verify-email") {
    try {
      await api("POST", "auth/verify-email", { token: mailed.token });
      notice("Your email address is verified.");
    } catch (error) {
      showError(error);
    }
  } else if (mailed) {
    resetToken = mailed.token;
    $("#sign-in").hidden = true;
    $("#new-password").hidden = false;
    notice("Choose a new password.");
  }
  try {
    const me = await api("GET", "users/me");
    await signedIn(me);
  } catch (error) {
    if (error.status !== 401) showError(error);
    $("#signed-out").hidden = false;
  }
}

async function signedIn(me) {
  $("#who").textContent = me.username;
  $("#transport").textContent = transport === "ws" ? "WebSocket" : "EventSource";
  $("#signed-out").hidden = true;
  $("#signed-in").hidden = false;
  $("#unverified").hidden = me.email_verified;
  await listChannels();
}

async function listChannels() {
  const channels = await api("GET", "channels?limit=100");
  const list = $("#channels");
  list.replaceChildren();
  for (const channel of channels) {
    const item = document.createElement("li");
    item.dataset.id = channel.id;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `#${channel.name}`;
    button.addEventListener("click", () => openChannel(channel));
    item.append(button);
    list.append(item);
  }
}

function openChannel(channel) {
  closeFeed();
  chat.channel = channel.id;
  chat.seqs = [];
  chat.position = null;
  $("#messages").replaceChildren();
  $("#channel-name").textContent = `#${channel.name}`;
  for (const item of document.querySelectorAll("#channels li")) {
    item.classList.toggle("current", item.dataset.id === channel.id);
  }
  $("#post").hidden = false;
  if (transport === "ws") openSocket(null);
  else openEvents(null);
}

function show(message) {
  if (message.channel_id !== chat.channel) return;
  const last = chat.seqs.length ? chat.seqs[chat.seqs.length - 1] : 0;
  if (message.seq <= last) return; // resumed from a position: never shown twice
  chat.seqs.push(message.seq);
  chat.position = message.seq;
  const item = document.createElement("li");
  item.dataset.seq = message.seq;
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = message.author.username;
  item.append(author, document.createTextNode(message.body)); // text nodes: a message cannot inject markup
  $("#messages").append(item);
}

// EventSource: the session cookie authenticates it and the browser reconnects by itself with Last-Event-ID, so
// nothing published while it was away is missed. keel renews an expired session on that very request.
function openEvents(lastEventId) {
  const query = new URLSearchParams({ channel: chat.channel });
  if (lastEventId) query.set("last_event_id", lastEventId);
  const source = new EventSource(`/events?${query}`);
  let lastId = lastEventId;
  feed = source;
  source.onopen = () => {
    chat.opened += 1;
    setStatus("live");
  };
  source.addEventListener("message", (event) => {
    lastId = event.lastEventId;
    show(JSON.parse(event.data));
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED && feed === source) {
      // the server answered with an error (say, 503 while it restarts): the browser gives up, the page does not
      setStatus("reconnecting");
      chat.reopenedByScript += 1;
      setTimeout(() => feed === source && openEvents(lastId), 2000);
    } else {
      setStatus("reconnecting"); // the browser retries on its own
    }
  };
}

// WebSocket: the same cookie authenticates the handshake; the page reconnects and resumes with `since`.
function openSocket(since) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  feed = socket;
  socket.onopen = () => {
    chat.opened += 1;
    const frame = { type: "subscribe", channel: chat.channel };
    if (since !== null) frame.since = since;
    socket.send(JSON.stringify(frame));
  };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "subscribed") {
      if (chat.position === null) chat.position = frame.last_seq; // where a resume starts from, messages or not
      setStatus("live");
    }
    else if (frame.type === "message") show(frame.message);
    else if (frame.type === "error") showError(frame.detail);
  };
  socket.onclose = (event) => {
    if (feed !== socket) return;
    if (event.code === 4401) {
      setStatus("signed out");
      return;
    }
    setStatus("reconnecting");
    setTimeout(() => feed === socket && openSocket(chat.position), 1000);
  };
}

function closeFeed() {
  const old = feed;
  feed = null;
  if (old) old.close();
}

$("#sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    await api("POST", "auth/session", { username: form.get("username"), password: form.get("password") });
    showError(null);
    await signedIn(await api("GET", "users/me"));
  } catch (error) {
    showError(error);
  }
});

$("#sign-up").addEventListener("click", async () => {
  const form = new FormData($("#sign-in"));
  const username = String(form.get("username"));
  try {
    await api("POST", "users", { username, email: `${username}@example.com`, password: form.get("password") });
    $("#sign-in").requestSubmit();
  } catch (error) {
    showError(error);
  }
});

$("#forgot").addEventListener("click", () => {
  $("#forgot-password").hidden = false;
});

$("#forgot-password").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const accepted = await api("POST", "auth/password-reset", { email: new FormData(event.target).get("email") });
    notice(`${accepted.message} (In development, see var/mail/.)`);
    showError(null);
  } catch (error) {
    showError(error);
  }
});

$("#new-password").addEventListener("submit", async (event) => {
  event.preventDefault();
  const password = new FormData(event.target).get("new_password");
  try {
    await api("POST", "auth/password-reset/confirm", { token: resetToken, new_password: password });
    resetToken = null;
    event.target.hidden = true;
    $("#sign-in").hidden = false;
    notice("Your password is changed and every session of the account has ended. Sign in with the new one.");
    showError(null);
  } catch (error) {
    showError(error);
  }
});

$("#verify").addEventListener("click", async () => {
  try {
    notice((await api("POST", "users/me/email-verification")).message);
  } catch (error) {
    showError(error);
  }
});

$("#sign-out").addEventListener("click", async () => {
  closeFeed();
  try {
    await api("DELETE", "auth/session");
  } catch (error) {
    showError(error);
  }
  location.reload();
});

$("#new-channel").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("POST", "channels", { name: new FormData(event.target).get("name") });
    event.target.reset();
    await listChannels();
  } catch (error) {
    showError(error);
  }
});

$("#post").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = event.target.elements.body;
  try {
    await api("POST", `channels/${chat.channel}/messages`, { body: input.value });
    input.value = "";
    showError(null);
  } catch (error) {
    showError(error);
  }
});

start();
