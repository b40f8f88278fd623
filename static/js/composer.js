// The composer: the message box, the provider and model pickers, and the keys.
//
// Enter sends, Shift+Enter breaks the line, Escape stops the reply. The pickers start
// on the server's default provider and its default model, as `api/providers` names
// them, and follow the open conversation's choice.

import { call } from "./api.js";
import { element } from "./thread.js";

export class Composer {
  constructor(form, actions) {
    this.form = form;
    this.actions = actions; // send(text), stop(), typed()
    this.box = form.querySelector("#message");
    this.send = form.querySelector("#send");
    this.stop = form.querySelector("#stop");
    this.provider = form.querySelector("#provider");
    this.model = form.querySelector("#model");
    this.models = form.querySelector("#models");
    this.providers = [];
    this.default = null;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.box.addEventListener("input", () => {
      this.grow();
      if (this.box.value) this.actions.typed();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !this.stop.hidden) {
        event.preventDefault();
        this.actions.stop();
      }
    });
    this.stop.addEventListener("click", () => this.actions.stop());
    this.provider.addEventListener("change", () => this.pickModel(null));
  }

  async load() {
    const answer = await call("api/providers");
    this.default = answer.default;
    this.providers = answer.providers;
    this.provider.replaceChildren(
      ...this.providers.map((p) => {
        const option = element("option", "", p.available ? p.name : `${p.name} (no key)`);
        option.value = p.name;
        option.disabled = !p.available;
        return option;
      }),
    );
    this.choose(null, null);
  }

  // The picker as a conversation last used it, or the server's defaults.
  choose(provider, model) {
    const known = this.providers.find((p) => p.name === provider && p.available);
    this.provider.value = known ? provider : this.default;
    this.pickModel(known ? model : null);
  }

  pickModel(model) {
    const info = this.providers.find((p) => p.name === this.provider.value);
    const fallback = info?.default_model ?? "";
    this.models.replaceChildren(...(fallback ? [Object.assign(element("option"), { value: fallback })] : []));
    this.model.value = model || fallback;
    this.model.placeholder = fallback;
  }

  choice() {
    return { provider: this.provider.value || undefined, model: this.model.value.trim() || undefined };
  }

  submit() {
    const text = this.box.value.trim();
    if (!text || this.send.disabled) return;
    this.actions.send(text);
  }

  clear() {
    this.box.value = "";
    this.grow();
  }

  restore(text) {
    if (!this.box.value) this.box.value = text;
    this.grow();
  }

  // A reply streams in the open conversation: Send waits, Stop shows.
  busy(streaming) {
    this.send.disabled = streaming;
    this.stop.hidden = !streaming;
  }

  focus() {
    this.box.focus();
  }

  grow() {
    this.box.style.height = "auto";
    this.box.style.height = `${Math.min(this.box.scrollHeight, 240)}px`;
  }
}
