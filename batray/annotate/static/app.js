// The annotation page: talks to the JSON API with the session cookie. Model text is only ever
// put into the page with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the task on screen: {task_id, prompt, left, right}

// The annotator's actions (keys and buttons) run one at a time, in the order they were asked for: a key
// pressed while the previous action's requests are still in flight (the next task, the progress) waits
// for them instead of being dropped or acting on the task that is about to be replaced.
let pending = Promise.resolve();
function inTurn(action) {
  return (...args) => {
    pending = pending.then(() => action(...args)).catch((e) => say(`error: ${e}`, true));
    return pending;
  };
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  if (res.status !== 204) {
    try { data = await res.json(); } catch (e) { data = null; }
  }
  if (res.status === 401 && path !== "/api/session") showLogin();
  return { status: res.status, data };
}

function show(section) {
  for (const id of ["login", "task", "done"]) $(id).hidden = id !== section;
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", isError);
}

// Chinese text gets lang="zh-CN" so the browser picks CJK glyphs and line breaking.
function setText(el, text) {
  el.textContent = text;
  el.lang = /[\u3400-\u9fff\uf900-\ufaff]/.test(text) ? "zh-CN" : "en";
  el.scrollTop = 0;
}

function showLogin() {
  current = null;
  $("who").textContent = "";
  $("progress").textContent = "";
  $("logout").hidden = true;
  $("admin-link").hidden = true;
  show("login");
  $("token").focus();
}

function render(task, previous) {
  current = task;
  setText($("prompt"), task.prompt);
  setText($("left"), task.left);
  setText($("right"), task.right);
  $("answer").reset();
  if (previous) {
    check("acceptable_left", String(previous.acceptable_left));
    check("acceptable_right", String(previous.acceptable_right));
    check("helpfulness", previous.helpfulness);
    $("comment").value = previous.comment || "";
  }
  show("task");
  $("send").focus();
}

function check(name, value) {
  const input = document.querySelector(`input[name="${name}"][value="${value}"]`);
  if (input) input.checked = true;
}

function chosen(name) {
  const input = document.querySelector(`input[name="${name}"]:checked`);
  return input ? input.value : null;
}

async function refreshProgress() {
  const { status, data } = await api("GET", "/api/progress");
  if (status === 200) $("progress").textContent = `${data.labeled} labeled · ${data.remaining} left`;
}

async function loadNext() {
  const { status, data } = await api("GET", "/api/next");
  if (status === 200) render(data);
  else if (status === 204) { current = null; show("done"); }
  else if (status !== 401) say(`could not load the next task: ${(data && data.detail) || status}`, true);
  await refreshProgress();
}

const send = inTurn(async () => {
  if (!current) return;
  const accLeft = chosen("acceptable_left"), accRight = chosen("acceptable_right"), help = chosen("helpfulness");
  if (accLeft === null || accRight === null || help === null) {
    say("Answer acceptability for A and B and one helpfulness option. 请完成所有选项。", true);
    return;
  }
  const comment = $("comment").value.trim();
  const { status, data } = await api("POST", "/api/labels", {
    task_id: current.task_id,
    acceptable_left: accLeft === "true",
    acceptable_right: accRight === "true",
    helpfulness: help,
    comment: comment || null,
  });
  if (status === 201 || status === 409) {
    say(status === 201 ? "Saved. 已保存。" : data.detail);
    await loadNext();
  } else if (status !== 401) {
    say(`not saved: ${(data && data.detail) || status}`, true);
  }
});

const skip = inTurn(async () => {
  if (!current) return;
  const { status, data } = await api("POST", "/api/skip", { task_id: current.task_id });
  if (status === 200) { say("Skipped. 已跳过。"); await loadNext(); }
  else if (status !== 401) say(`could not skip: ${(data && data.detail) || status}`, true);
});

const undo = inTurn(async () => {
  const { status, data } = await api("DELETE", "/api/labels/last");
  if (status === 200) {
    render(data, data.previous);
    say("Last label undone: answer again. 已撤销。");
    await refreshProgress();
  } else if (status !== 401) say((data && data.detail) || `could not undo (${status})`, true);
});

// An option key is an action too: pressed right after Enter, it marks the task that comes next, as if the
// send had finished at once (never the form that the next task is about to replace).
const pick = inTurn((input) => { input.checked = true; say(""); });

async function start() {
  const { status, data } = await api("GET", "/api/me");
  if (status !== 200) return;
  $("who").textContent = data.name;
  $("admin-link").hidden = !data.admin;
  $("logout").hidden = false;
  await loadNext();
}

// Keyboard: 1-8 pick the options (shown on the page), Enter sends, S skips, U undoes the last
// label, C jumps to the comment. In the comment box keys type text; Ctrl/Cmd+Enter sends, Esc leaves.
function onKey(ev) {
  if (ev.target === $("comment")) {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); send(); }
    else if (ev.key === "Escape") $("comment").blur();
    return;
  }
  if (ev.target === $("token") || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  if (!$("done").hidden && ev.key.toLowerCase() === "u") { ev.preventDefault(); undo(); return; }
  if ($("task").hidden) return;
  const option = document.querySelector(`input[data-key="${ev.key}"]`);
  if (option) { ev.preventDefault(); pick(option); return; }
  switch (ev.key.toLowerCase()) {
    case "enter": ev.preventDefault(); send(); break;
    case "s": ev.preventDefault(); skip(); break;
    case "u": ev.preventDefault(); undo(); break;
    case "c": ev.preventDefault(); $("comment").focus(); break;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const { status, data } = await api("POST", "/api/session", { token: $("token").value.trim() });
    if (status === 200) { $("token").value = ""; $("login-error").textContent = ""; await start(); }
    else $("login-error").textContent = (data && data.detail) || `sign-in failed (${status})`;
  });
  $("answer").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("done-undo").addEventListener("click", undo);
  $("logout").addEventListener("click", async () => { await api("DELETE", "/api/session"); showLogin(); });
  document.addEventListener("keydown", onKey);
  start();
});
