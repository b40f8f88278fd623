// The live feeds: the user's (conversations and replies in every tab and device) and,
// for a shared conversation, that conversation's (who is present, who is typing).
//
// A browser allows six connections to one host, and every tab holds its feeds open,
// so tabs share one user feed: the tab holding a Web Lock reads it and passes each
// event on over a BroadcastChannel; when that tab closes, the lock passes to another.
// Where neither exists (a page not served over https or from localhost), each tab
// reads its own.

import { auth, request } from "./api.js";
import { backoff, sleep } from "./stream.js";
import { dataOf, readEvents } from "./sse.js";

// Read a feed until `signal` aborts, resuming with Last-Event-ID after a drop.
export async function followFeed(path, onEvent, signal) {
  let lastId = null;
  for (let attempt = 0; !signal.aborted; ) {
    try {
      const headers = lastId ? { "last-event-id": lastId } : {};
      const response = await request(path, { headers, signal });
      if (response.status === 404) return; // the conversation is gone, or not ours any more
      if (response.ok) {
        for await (const event of readEvents(response.body)) {
          attempt = 0;
          if (event.id) lastId = event.id;
          onEvent({ event: event.event, data: dataOf(event) ?? {} });
        }
      }
    } catch {
      // dropped: follow again below
    }
    if (signal.aborted) return;
    await sleep(backoff(attempt++), signal);
  }
}

export function followUserFeed(onEvent) {
  const name = `sidechat-feed:${auth.token ?? ""}`;
  const never = new AbortController().signal;
  if (!("BroadcastChannel" in window) || !navigator.locks) {
    followFeed("api/events", onEvent, never);
    return;
  }
  const channel = new BroadcastChannel(name);
  channel.onmessage = (message) => onEvent(message.data);
  navigator.locks.request(name, () =>
    followFeed(
      "api/events",
      (event) => {
        onEvent(event);
        channel.postMessage(event);
      },
      never,
    ),
  );
}

// A shared conversation's feed; `close()` leaves it (and its presence).
export function followConversation(conversationId, onEvent) {
  const leaving = new AbortController();
  followFeed(`api/conversations/${conversationId}/events`, onEvent, leaving.signal);
  return { close: () => leaving.abort() };
}

// Typing notices while the user types: `true` at most every few seconds, `false` soon
// after the last keystroke (the server also lets a notice expire by itself).
export class TypingNotices {
  constructor(conversationId) {
    this.path = `api/conversations/${conversationId}/typing`;
    this.sentAt = 0;
    this.idle = null;
  }

  typed() {
    const now = Date.now();
    if (now - this.sentAt > 3000) {
      this.sentAt = now;
      this.send(true);
    }
    clearTimeout(this.idle);
    this.idle = setTimeout(() => this.stopped(), 2500);
  }

  stopped() {
    clearTimeout(this.idle);
    if (this.sentAt) {
      this.sentAt = 0;
      this.send(false);
    }
  }

  send(typing) {
    request(this.path, { method: "POST", body: { typing } }).catch(() => {});
  }
}
