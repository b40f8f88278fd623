// The messages of the open conversation, kept by id and drawn into the page.
//
// Superseded messages (an old reply that was regenerated, a user message that was
// edited) stay in the model but are not shown: the page shows the newest. A streaming
// reply is redrawn at most once a frame however fast its tokens come.

import { renderMarkdown } from "./markdown.js";

const FINISHED = new Set(["completed", "failed", "cancelled", "interrupted"]);

export class Thread {
  constructor(list, actions) {
    this.list = list;
    this.actions = actions; // regenerate(m), edit(m, text), copy(text)
    this.messages = new Map();
    this.nodes = new Map();
    this.shared = false;
    this.editing = null;
    this.pending = new Set();
    this.frame = null;
  }

  clear() {
    this.messages.clear();
    this.nodes.clear();
    this.editing = null;
    this.list.replaceChildren();
  }

  upsert(message) {
    const known = this.messages.get(message.id);
    const merged = known ? { ...known, ...message, metadata: { ...known.metadata, ...message.metadata } } : message;
    this.messages.set(message.id, merged);
    const replaced = merged.metadata?.supersedes;
    if (replaced != null && this.messages.has(replaced)) {
      const old = this.messages.get(replaced);
      old.metadata = { ...old.metadata, superseded_by: merged.id };
    }
    this.changed(merged.id);
    return merged;
  }

  remove(id) {
    this.messages.delete(id);
    this.changed(id);
  }

  get(id) {
    return this.messages.get(id);
  }

  visible() {
    return [...this.messages.values()]
      .filter((m) => m.role !== "system" && m.metadata?.superseded_by == null)
      .sort((a, b) => order(a) - order(b));
  }

  streaming() {
    return this.visible().find((m) => m.role === "assistant" && m.status === "streaming");
  }

  last(role) {
    return this.visible().findLast((m) => m.role === role);
  }

  appendText(id, text) {
    const message = this.messages.get(id);
    if (!message) return;
    message.content += text;
    this.changed(id);
  }

  // Redraw soon: at the next frame, or within a quarter second where frames are paused.
  changed(id) {
    this.pending.add(id);
    if (this.frame) return;
    const draw = () => {
      cancelAnimationFrame(this.frame.raf);
      clearTimeout(this.frame.timer);
      this.frame = null;
      this.render();
    };
    this.frame = { raf: requestAnimationFrame(draw), timer: setTimeout(draw, 250) };
  }

  render() {
    const pinned = nearBottom(this.list);
    const shown = this.visible();
    const lastUser = this.last("user");
    const lastReply = this.last("assistant");
    const busy = Boolean(this.streaming());
    const wanted = new Set(shown.map((m) => m.id));
    for (const [id, node] of this.nodes) {
      if (!wanted.has(id)) {
        node.remove();
        this.nodes.delete(id);
      }
    }
    let before = null;
    for (const message of shown.toReversed()) {
      let node = this.nodes.get(message.id);
      const options = { editable: message === lastUser && !busy, latest: message === lastReply };
      if (!node || this.pending.has(message.id) || node.dataset.options !== JSON.stringify(options)) {
        const drawn = this.draw(message, options, node);
        if (node) node.replaceWith(drawn);
        node = drawn;
        this.nodes.set(message.id, node);
      }
      if (node.nextSibling !== before || node.parentNode !== this.list) this.list.insertBefore(node, before);
      before = node;
    }
    this.pending.clear();
    if (pinned) this.list.scrollTop = this.list.scrollHeight;
    this.onRender?.(shown.length);
  }

  // `old`, the node drawn before: a reply keeps its content element, so that a screen
  // reader hears one live region grow rather than a new one for every token.
  draw(message, options, old = null) {
    const item = element("li", `message ${message.role}`);
    item.dataset.id = message.id;
    item.dataset.status = message.status;
    item.dataset.options = JSON.stringify(options);
    if (message.role === "user" && this.shared && message.user) {
      item.append(element("div", "author", message.user));
    }
    const bubble = element("div", "bubble");
    item.append(bubble);
    if (this.editing === message.id) {
      bubble.append(this.editor(message));
      return item;
    }
    const kept = message.role === "assistant" ? old?.querySelector(":scope > .bubble > .content") : null;
    const content = kept ?? element("div", message.role === "assistant" ? "content markdown" : "content");
    bubble.append(content);
    if (message.role === "user") {
      content.textContent = message.content;
    } else {
      const streaming = message.status === "streaming";
      content.setAttribute("aria-live", "polite");
      content.setAttribute("aria-busy", String(streaming));
      if (streaming && !message.content) content.replaceChildren(typingDots());
      else renderMarkdown(content, message.content);
      const label = statusLabel(message);
      if (label) item.append(element("p", "status-label", label));
    }
    item.append(this.buttons(message, options));
    return item;
  }

  buttons(message, { editable, latest }) {
    const bar = element("div", "actions");
    const add = (text, name, run) => {
      const button = element("button", `action ${name}`, text);
      button.type = "button";
      button.addEventListener("click", run);
      bar.append(button);
      return button;
    };
    if (message.role === "user") {
      if (editable && typeof message.id === "number") {
        add("Edit", "edit", () => {
          this.editing = message.id;
          this.changed(message.id);
        }).setAttribute("aria-label", "Edit your last message");
      }
      return bar;
    }
    if (!FINISHED.has(message.status)) return bar;
    add("Copy", "copy-reply", () => this.actions.copy(message.content)).setAttribute("aria-label", "Copy reply");
    if (latest) {
      const failed = message.status === "failed" || message.status === "interrupted";
      add(failed ? "Retry" : "Regenerate", failed ? "retry" : "regenerate", () => this.actions.regenerate(message));
    }
    const details = detailsOf(message);
    const toggle = add("Details", "details-toggle", () => {
      const open = details.hidden;
      details.hidden = !open;
      toggle.setAttribute("aria-expanded", String(open));
    });
    details.id = `details-${message.id}`;
    toggle.setAttribute("aria-expanded", "false");
    toggle.setAttribute("aria-controls", details.id);
    const wrap = document.createDocumentFragment();
    wrap.append(bar, details);
    return wrap;
  }

  editor(message) {
    const form = element("form", "edit-form");
    const label = element("label", "visually-hidden", "Edit message");
    const box = element("textarea", "edit-box");
    box.id = `edit-${message.id}`;
    label.htmlFor = box.id;
    box.value = message.content;
    const save = element("button", "primary", "Save and send");
    save.type = "submit";
    const cancel = element("button", "", "Cancel");
    cancel.type = "button";
    const stop = () => {
      this.editing = null;
      this.changed(message.id);
    };
    cancel.addEventListener("click", stop);
    box.addEventListener("keydown", (event) => {
      if (event.key === "Escape") stop();
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) form.requestSubmit();
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = box.value.trim();
      if (!text) return;
      this.editing = null;
      this.actions.edit(message, text);
    });
    form.append(label, box, element("div", "edit-buttons"));
    form.lastChild.append(save, cancel);
    queueMicrotask(() => box.focus());
    return form;
  }
}

function order(message) {
  return typeof message.id === "number" ? message.id : Number.MAX_SAFE_INTEGER - 1 + (message.order ?? 0);
}

function nearBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

export function element(tag, className = "", text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

function typingDots() {
  const dots = element("span", "dots");
  dots.setAttribute("role", "status");
  dots.setAttribute("aria-label", "sidechat is typing");
  dots.append(element("i"), element("i"), element("i"));
  return dots;
}

function statusLabel(message) {
  const error = message.metadata?.error?.message;
  switch (message.status) {
    case "cancelled":
      return "Cancelled";
    case "interrupted":
      return `Interrupted${error ? `: ${error}` : ""}`;
    case "failed":
      return `Failed${error ? `: ${error}` : ""}`;
    default:
      return message.metadata?.finish_reason === "length" ? "Cut off at the length limit" : "";
  }
}

function detailsOf(message) {
  const m = message.metadata ?? {};
  const usage = m.usage ?? {};
  const rows = [
    ["Provider", m.provider],
    ["Model", m.model],
    ["Tokens", usage.input_tokens != null ? `${usage.input_tokens} in, ${usage.output_tokens ?? 0} out` : null],
    ["First token", m.ttft_ms != null ? `${m.ttft_ms} ms` : null],
    ["Duration", m.duration_ms != null ? `${m.duration_ms} ms` : null],
    ["Cost", m.cost_usd != null ? `$${Number(m.cost_usd).toFixed(6)}` : null],
  ];
  const list = element("dl", "details");
  list.hidden = true;
  for (const [name, value] of rows) {
    if (value == null) continue;
    list.append(element("dt", "", name), element("dd", "", String(value)));
  }
  return list;
}
