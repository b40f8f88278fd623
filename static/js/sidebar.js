// The conversation list: newest activity first, more loaded on scroll, and kept in
// step with the user feed (created, updated, deleted, new messages).

import { call } from "./api.js";
import { element } from "./thread.js";

const PAGE = 30;
const since = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const STEPS = [
  [60, "second"],
  [60, "minute"],
  [24, "hour"],
  [7, "day"],
  [4.35, "week"],
  [12, "month"],
  [Infinity, "year"],
];

export function relativeTime(iso, now = Date.now()) {
  let amount = (Date.parse(iso) - now) / 1000;
  for (const [size, unit] of STEPS) {
    if (Math.abs(amount) < size) return unit === "second" && amount > -45 ? "just now" : since.format(Math.round(amount), unit);
    amount /= size;
  }
  return "";
}

const activity = (c) => c.last_message_at || c.updated_at || c.created_at;

export class Sidebar {
  constructor(list, sentinel, actions) {
    this.list = list;
    this.actions = actions; // open(id), rename(c), remove(c)
    this.conversations = new Map();
    this.cursor = undefined; // undefined: not loaded yet; null: everything loaded
    this.current = null;
    this.loading = null;
    this.sentinel = sentinel;
    // Only after the first page, which the page asks for itself: then whenever the end of
    // the list comes into view.
    this.observer = new IntersectionObserver((seen) => {
      if (this.cursor !== undefined && seen.some((s) => s.isIntersecting)) this.more();
    });
    this.observer.observe(sentinel);
    setInterval(() => this.render(), 60_000); // "5 minutes ago" moves on
  }

  async reload() {
    this.conversations.clear();
    this.cursor = undefined;
    await this.more();
  }

  more() {
    if (this.cursor === null) return this.loading;
    this.loading ??= (async () => {
      try {
        const query = this.cursor ? `&cursor=${encodeURIComponent(this.cursor)}` : "";
        const page = await call(`api/conversations?limit=${PAGE}${query}`);
        for (const c of page.conversations) this.conversations.set(c.id, c);
        this.cursor = page.next_cursor;
        this.render();
        if (this.cursor) {
          // Look again: a tall window may show the end of the list with nothing to scroll.
          this.observer.unobserve(this.sentinel);
          this.observer.observe(this.sentinel);
        }
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  upsert(conversation) {
    const known = this.conversations.get(conversation.id);
    this.conversations.set(conversation.id, { ...known, ...conversation });
    this.render();
  }

  touched(conversationId, at) {
    if (this.conversations.has(conversationId)) this.upsert({ id: conversationId, last_message_at: at });
  }

  remove(conversationId) {
    this.conversations.delete(conversationId);
    this.render();
  }

  select(conversationId) {
    this.current = conversationId;
    this.render();
  }

  render() {
    const sorted = [...this.conversations.values()].sort(
      (a, b) => activity(b).localeCompare(activity(a)) || b.id - a.id,
    );
    const focused = document.activeElement?.closest?.(".conversation")?.dataset.id;
    this.list.replaceChildren(...sorted.map((c) => this.item(c)));
    if (focused) this.list.querySelector(`[data-id="${focused}"] .open`)?.focus();
  }

  item(conversation) {
    const title = conversation.title || "New chat";
    const item = element("li", "conversation");
    item.dataset.id = conversation.id;
    const open = element("a", "open");
    open.href = `#/c/${conversation.id}`;
    if (conversation.id === this.current) open.setAttribute("aria-current", "page");
    const time = element("time", "when", relativeTime(activity(conversation)));
    time.dateTime = activity(conversation);
    open.append(element("span", "title", title), time);
    const rename = element("button", "icon rename", "✎");
    rename.type = "button";
    rename.setAttribute("aria-label", `Rename “${title}”`);
    rename.addEventListener("click", () => this.actions.rename(conversation));
    const remove = element("button", "icon delete", "✕");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete “${title}”`);
    remove.addEventListener("click", () => this.actions.remove(conversation));
    item.append(open, rename, remove);
    return item;
  }
}
