// The open conversation: loading it, sending, stopping, regenerating and editing, and
// following every reply that streams in it, whichever tab or member started it.
//
// Each reply is followed by exactly one ReplyFollower, keyed by its id. A reply this
// tab starts is followed on the response to its own POST; the user feed announces the
// same reply too, so feed events wait for any request this tab has in flight and then
// skip replies already followed: text is never shown twice.

import { ApiError, call, errorOf, request } from "./api.js";
import { followConversation, TypingNotices } from "./feed.js";
import { ReplyFollower } from "./stream.js";

export class Chat {
  constructor({ thread, composer, sidebar, view }) {
    this.thread = thread;
    this.composer = composer;
    this.sidebar = sidebar;
    this.view = view; // title(c), notice(text), presence(users), typing(users), navigated(id), system(text)
    this.conversation = null;
    this.followers = new Map();
    this.inflight = Promise.resolve();
    this.feed = null;
    this.typing = null;
    this.typists = new Set();
    this.me = null;
    this.olderThan = null;
    this.draftSystem = "";
  }

  get id() {
    return this.conversation?.id ?? null;
  }

  // -- opening ---------------------------------------------------------------------------

  async open(id) {
    this.leave();
    if (id === null) {
      this.view.title(null);
      this.view.system(this.draftSystem);
      this.composer.choose(null, null);
      this.sidebar.select(null);
      return;
    }
    let page;
    try {
      page = await call(`api/conversations/${id}?limit=50`);
    } catch (error) {
      this.view.notice(error instanceof ApiError && error.status === 404 ? "That conversation is gone." : error.message);
      this.view.navigated(null);
      return;
    }
    this.conversation = page.conversation;
    this.olderThan = page.next_before_id;
    this.sidebar.select(id);
    this.sidebar.upsert(page.conversation);
    this.view.title(page.conversation);
    this.view.system(page.conversation.system ?? "");
    this.composer.choose(page.conversation.provider, page.conversation.model);
    for (const message of page.messages) this.thread.upsert(message);
    for (const message of page.messages) {
      if (message.role === "assistant" && message.status === "streaming") this.followReply(message.id);
    }
    this.refreshBusy();
    this.share(id);
  }

  async earlier() {
    if (!this.conversation || !this.olderThan) return;
    const page = await call(`api/conversations/${this.id}?limit=50&before_id=${this.olderThan}`);
    this.olderThan = page.next_before_id;
    for (const message of page.messages) this.thread.upsert(message);
  }

  leave() {
    for (const follower of this.followers.values()) follower.close();
    this.followers.clear();
    this.feed?.close();
    this.typing?.stopped();
    this.feed = this.typing = this.conversation = this.olderThan = null;
    this.typists.clear();
    this.thread.shared = false;
    this.thread.clear();
    this.view.presence([]);
    this.view.typing([]);
  }

  // A shared conversation also follows its own feed, for presence and typing.
  async share(id) {
    const members = await call(`api/conversations/${id}/members`).catch(() => null);
    if (!members || this.id !== id) return;
    if (!members.members.length) return;
    this.thread.shared = true;
    this.thread.render();
    this.typing = new TypingNotices(id);
    this.feed = followConversation(id, (event) => this.onConversationEvent(event));
  }

  onConversationEvent({ event, data }) {
    if (event === "presence") this.view.presence(data.users.filter((u) => u !== this.me));
    if (event === "typing" && data.user !== this.me) {
      if (data.typing) this.typists.add(data.user);
      else this.typists.delete(data.user);
      this.view.typing([...this.typists]);
    }
  }

  // -- sending ---------------------------------------------------------------------------

  send(text) {
    this.typing?.stopped();
    const pending = this.thread.upsert({ id: "pending", role: "user", content: text, status: "completed", metadata: {} });
    this.composer.clear();
    this.composer.busy(true);
    const body = { message: text, ...this.composer.choice() };
    if (this.id !== null) body.conversation_id = this.id;
    else if (this.draftSystem) body.system = this.draftSystem;
    this.track(async () => {
      const response = await request("api/chat/stream", { method: "POST", body });
      if (!response.ok) throw await errorOf(response);
      const conversationId = Number(response.headers.get("x-conversation-id"));
      const replyId = Number(response.headers.get("x-message-id"));
      if (this.id === null) await this.adopt(conversationId);
      if (this.id !== conversationId) return response.body.cancel(); // the user moved on
      const metadata = { provider: body.provider, model: body.model };
      this.thread.upsert({ id: replyId, role: "assistant", content: "", status: "streaming", metadata });
      this.followReply(replyId, response, (start) => {
        this.thread.remove(pending.id);
        this.thread.upsert({ ...pending, id: start.user_message_id, user: this.me });
      });
    }, () => {
      this.thread.remove(pending.id);
      this.composer.restore(text);
    });
  }

  // The conversation a first message created becomes the open one.
  async adopt(conversationId) {
    const page = await call(`api/conversations/${conversationId}?limit=1`);
    this.conversation = page.conversation;
    this.draftSystem = "";
    this.sidebar.upsert(page.conversation);
    this.sidebar.select(conversationId);
    this.view.title(page.conversation);
    this.view.navigated(conversationId);
  }

  regenerate(reply) {
    this.track(async () => {
      const turn = await call(`api/messages/${reply.id}/regenerate`, { method: "POST", body: this.composer.choice() });
      this.startedElsewhere(turn.message_id, { supersedes: reply.id });
    });
  }

  edit(asked, text) {
    const reply = this.thread.visible().find((m) => m.role === "assistant" && m.id > asked.id);
    this.track(async () => {
      const body = { message: text, ...this.composer.choice() };
      const turn = await call(`api/messages/${asked.id}/edit`, { method: "POST", body });
      if (reply) this.thread.upsert({ id: reply.id, metadata: { superseded_by: turn.message_id } });
      this.thread.upsert({ id: turn.user_message_id, role: "user", content: text, status: "completed", user: this.me, metadata: { supersedes: asked.id } });
      this.startedElsewhere(turn.message_id, reply ? { supersedes: reply.id } : {});
    });
  }

  stop() {
    const reply = this.thread.streaming();
    if (!reply) return;
    request(`api/messages/${reply.id}/cancel`, { method: "POST" }).catch((error) => this.view.notice(error.message));
  }

  // Run a request; feed events wait for it. `undo` puts things back when it fails.
  track(run, undo = () => {}) {
    const done = run().catch((error) => {
      undo();
      this.view.notice(error.message || String(error));
    });
    this.inflight = this.inflight.then(() => done);
    done.finally(() => this.refreshBusy());
  }

  // -- following replies -----------------------------------------------------------------

  startedElsewhere(replyId, metadata = {}) {
    if (this.followers.has(replyId)) return;
    this.thread.upsert({ id: replyId, role: "assistant", content: "", status: "streaming", metadata });
    this.followReply(replyId);
  }

  followReply(replyId, first = null, onStart = null) {
    if (this.followers.has(replyId)) return;
    const thread = this.thread;
    const follower = new ReplyFollower(replyId, {
      start: (data) => {
        onStart?.(data);
        onStart = null;
      },
      token: (text) => thread.appendText(replyId, text),
      reset: () => thread.upsert({ id: replyId, content: "" }),
      provider: (data) => thread.upsert({ id: replyId, metadata: data }),
      end: (event, data) => this.finished(replyId, event, data),
      gone: () => this.finished(replyId, "gone", {}),
    });
    this.followers.set(replyId, follower);
    if (!first) thread.upsert({ id: replyId, content: "" }); // an attach replays from the start
    this.refreshBusy();
    follower.follow(first);
  }

  async finished(replyId, event, data) {
    this.followers.delete(replyId);
    const shown = this.thread.get(replyId);
    if (shown && event !== "gone") {
      const cancelled = data.finish_reason === "cancelled";
      const status = event === "done" ? (cancelled ? "cancelled" : "completed") : "failed";
      this.thread.upsert({ id: replyId, status, metadata: event === "error" ? { error: data.error } : data });
    }
    this.refreshBusy();
    if (!shown || this.id === null) return; // left meanwhile
    // The stored row has the last word: its exact status, error text and cost.
    const answer = await call(`api/conversations/${this.id}/messages?after_id=${replyId - 1}`).catch(() => null);
    const stored = answer?.messages.find((m) => m.id === replyId);
    if (stored && this.thread.get(replyId)) this.thread.upsert(stored);
    this.refreshBusy();
  }

  refreshBusy() {
    this.composer.busy(Boolean(this.thread.streaming()) || this.thread.get("pending") !== undefined);
  }

  // -- the user feed ---------------------------------------------------------------------

  async onUserEvent({ event, data }) {
    await this.inflight;
    const here = (id) => id != null && id === this.id;
    switch (event) {
      case "conversation.created":
      case "conversation.updated":
        this.sidebar.upsert(data.conversation);
        if (here(data.conversation.id)) {
          this.conversation = { ...this.conversation, ...data.conversation };
          this.view.title(this.conversation);
          this.view.system(this.conversation.system ?? "");
        }
        break;
      case "conversation.deleted":
        this.sidebar.remove(data.conversation_id);
        if (here(data.conversation_id)) {
          this.view.notice("This conversation was deleted.");
          this.view.navigated(null);
        }
        break;
      case "message.created":
        this.sidebar.touched(data.message.conversation_id, data.message.created_at);
        if (here(data.message.conversation_id) && !this.thread.get(data.message.id)) {
          // This tab's own message, told by the feed before its reply's `start` named it.
          const pending = this.thread.get("pending");
          if (pending && data.message.role === "user" && data.message.content === pending.content) {
            this.thread.remove("pending");
          }
          this.thread.upsert(data.message);
        }
        break;
      case "generation.started":
        if (here(data.conversation_id)) {
          const metadata = { provider: data.provider, model: data.model, supersedes: data.supersedes };
          this.startedElsewhere(data.message_id, metadata);
        }
        break;
      case "generation.finished":
        this.sidebar.touched(data.conversation_id, new Date().toISOString());
        break;
      case "reset":
        await this.sidebar.reload();
        if (this.id !== null) await this.open(this.id);
        break;
    }
  }
}
