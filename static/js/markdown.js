// Model output as safe HTML: markdown rendered by marked, cleaned by DOMPurify,
// code highlighted by highlight.js.
//
// Model output is untrusted. Raw HTML in it is shown as text, never parsed; images
// become links, so nothing remote is ever loaded; links open in a new tab with no
// opener and no referrer, and only http(s) and mailto links survive. DOMPurify then
// checks the result again, with nothing allowed that markdown does not make.

import { Marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import hljs from "../vendor/highlightjs/highlight.min.js";

const SAFE_URL = /^(?:https?:|mailto:)/i;

const escape = (text) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({
  gfm: true,
  renderer: {
    html: ({ text }) => escape(text),
    image: ({ href, text }) =>
      SAFE_URL.test(href) ? `<a href="${escape(href)}">${escape(text || href)}</a>` : escape(text),
    link({ href, title, tokens }) {
      const label = this.parser.parseInline(tokens);
      if (!SAFE_URL.test(href)) return label;
      const titled = title ? ` title="${escape(title)}"` : "";
      return `<a href="${escape(href)}"${titled}>${label}</a>`;
    },
  },
});

const purify = DOMPurify();
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const CLEAN = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "input", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "class", "start", "align", "type", "checked", "disabled", "target", "rel"],
  ALLOWED_URI_REGEXP: SAFE_URL,
  RETURN_DOM_FRAGMENT: true,
};

// Render `text` into `element`, replacing what it held.
export function renderMarkdown(element, text) {
  const fragment = purify.sanitize(marked.parse(text), CLEAN);
  for (const input of fragment.querySelectorAll("input")) {
    if (input.type !== "checkbox") input.remove();
    else input.disabled = true; // a task list's box, shown, not used
  }
  for (const code of fragment.querySelectorAll("pre > code")) decorate(code);
  element.replaceChildren(fragment);
}

function decorate(code) {
  const language = /\blanguage-([\w+#.-]+)/.exec(code.className)?.[1];
  if (language && hljs.getLanguage(language)) {
    code.innerHTML = hljs.highlight(code.textContent, { language, ignoreIllegals: true }).value;
  } else {
    code.innerHTML = hljs.highlightAuto(code.textContent).value;
  }
  code.classList.add("hljs");
  const pre = code.parentElement;
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const label = document.createElement("span");
  label.textContent = language || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy ${language || ""} code`.replace("  ", " "));
  bar.append(label, copy);
  pre.prepend(bar);
}

// The text of the code block a Copy button belongs to.
export function codeOf(button) {
  return button.closest("pre")?.querySelector("code")?.textContent ?? "";
}
