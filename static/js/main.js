// The page: wires the sidebar, the thread, the composer and the dialogs together, and
// routes `#/c/{id}` to the open conversation (a hash, so every URL stays relative and
// the page works under any path prefix).

import { auth, call } from "./api.js";
import { Chat } from "./chat.js";
import { Composer } from "./composer.js";
import { followUserFeed } from "./feed.js";
import { codeOf } from "./markdown.js";
import { Sidebar } from "./sidebar.js";
import { Thread } from "./thread.js";

const $ = (id) => document.getElementById(id);

function ask(dialog, prepare) {
  prepare?.();
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
}

auth.askToken = async (refused) => {
  $("token-refused").hidden = !refused;
  $("token").value = "";
  const answer = await ask($("token-dialog"));
  return answer === "save" ? $("token").value.trim() || null : null;
};

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const scratch = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(scratch);
    scratch.select();
    document.execCommand("copy");
    scratch.remove();
  }
  if (button) {
    const was = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = was), 1500);
  }
}

const view = {
  title(conversation) {
    const title = conversation?.title || "New chat";
    $("chat-title").textContent = title;
    document.title = conversation ? `${title} · sidechat` : "sidechat";
  },
  notice(text) {
    $("notice-text").textContent = text;
    $("notice").hidden = !text;
  },
  presence(users) {
    $("presence").hidden = !users.length;
    $("presence").textContent = users.length ? `Here: ${users.join(", ")}` : "";
  },
  typing(users) {
    const names = users.join(", ");
    $("typing-note").textContent = users.length ? `${names} ${users.length > 1 ? "are" : "is"} typing…` : "";
  },
  navigated(id) {
    const hash = id === null ? "#/" : `#/c/${id}`;
    if (location.hash !== hash) history.pushState(null, "", hash);
    if (id === null) chat.open(null);
  },
  system(text) {
    $("system").value = text;
    $("system-saved").textContent = "";
  },
};

const thread = new Thread($("messages"), {
  regenerate: (reply) => chat.regenerate(reply),
  edit: (asked, text) => chat.edit(asked, text),
  copy: (text) => copy(text),
});
thread.onRender = (shown) => {
  $("empty").hidden = shown > 0;
  $("load-earlier").hidden = !chat.olderThan;
};
const composer = new Composer($("composer"), {
  send: (text) => chat.send(text),
  stop: () => chat.stop(),
  typed: () => chat.typing?.typed(),
});
const sidebar = new Sidebar($("conversations"), $("list-end"), {
  rename: async (conversation) => {
    const answer = await ask($("rename-dialog"), () => ($("rename-title").value = conversation.title || ""));
    const title = $("rename-title").value.trim();
    if (answer !== "save" || !title) return;
    const body = { title };
    const renamed = await call(`api/conversations/${conversation.id}`, { method: "PATCH", body }).catch(failed);
    if (renamed) chat.onUserEvent({ event: "conversation.updated", data: renamed });
  },
  remove: async (conversation) => {
    const prepare = () => ($("delete-text").textContent = `“${conversation.title || "New chat"}” and its messages will be deleted.`);
    if ((await ask($("delete-dialog"), prepare)) !== "delete") return;
    const deleted = await call(`api/conversations/${conversation.id}`, { method: "DELETE" }).then(() => true, failed);
    if (deleted) chat.onUserEvent({ event: "conversation.deleted", data: { conversation_id: conversation.id } });
  },
});
const chat = new Chat({ thread, composer, sidebar, view });

function failed(error) {
  view.notice(error.message);
  return null;
}

function showSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  $("toggle-sidebar").setAttribute("aria-expanded", String(open));
}

function route() {
  const match = /^#\/c\/(\d+)$/.exec(location.hash);
  const id = match ? Number(match[1]) : null;
  showSidebar(false);
  if (id !== chat.id || id === null) chat.open(id).then(() => composer.focus());
}

$("new-chat").addEventListener("click", () => {
  showSidebar(false);
  view.navigated(null);
  composer.focus();
});
$("notice-close").addEventListener("click", () => view.notice(""));
$("load-earlier").addEventListener("click", () => chat.earlier().catch(failed));
$("toggle-sidebar").addEventListener("click", () => showSidebar(!document.body.classList.contains("sidebar-open")));
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault(); // its #message would be taken for a route
  composer.focus();
});
$("system-toggle").addEventListener("click", () => {
  const panel = $("system-panel");
  panel.hidden = !panel.hidden;
  $("system-toggle").setAttribute("aria-expanded", String(!panel.hidden));
  if (!panel.hidden) $("system").focus();
});
$("system-panel").addEventListener("submit", async (event) => {
  event.preventDefault();
  const system = $("system").value;
  if (chat.id === null) chat.draftSystem = system;
  else if (!(await call(`api/conversations/${chat.id}`, { method: "PATCH", body: { system } }).catch(failed))) return;
  $("system-saved").textContent = "Saved";
});
$("messages").addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (button) copy(codeOf(button), button);
});
window.addEventListener("hashchange", route);

async function start() {
  try {
    await composer.load();
    chat.me = (await call("api/me").catch(() => null))?.user ?? null;
    await sidebar.more();
  } catch (error) {
    view.notice(`sidechat cannot be reached: ${error.message}`);
    return;
  }
  followUserFeed((event) => chat.onUserEvent(event));
  route();
}

start();
