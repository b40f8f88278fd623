// Following one reply's event stream to its end, whatever happens to the connection.
//
// The first connection is the POST that started the reply (or an attach). When it
// drops, or goes quiet for longer than heartbeats allow, the follower attaches again
// to `api/messages/{id}/stream` with `Last-Event-ID`, backing off exponentially, so
// the reply continues exactly where it was: no text twice, none missing. A `reset`
// event means the server no longer has the events in between and sends the whole
// text again: the reply is replaced, not appended to.

import { request } from "./api.js";
import { dataOf, readEvents } from "./sse.js";

const STALL_MS = 45_000; // three heartbeats at the server's default 15 s
const MAX_BACKOFF_MS = 10_000;

export function backoff(attempt) {
  const ceiling = Math.min(MAX_BACKOFF_MS, 500 * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

// handlers: start(data), token(text), reset(), provider(data), end(event, data),
// connection(state: "live" | "reconnecting"), gone(status) when the reply cannot be read
export class ReplyFollower {
  constructor(messageId, handlers) {
    this.messageId = messageId;
    this.handlers = handlers;
    this.lastId = null;
    this.stopped = new AbortController();
    this.ended = false;
  }

  // Stop reading (leaving the conversation); the reply goes on on the server.
  close() {
    this.stopped.abort();
  }

  async follow(first = null) {
    let response = first;
    for (let attempt = 0; !this.stopped.signal.aborted; ) {
      const connection = new AbortController();
      const abort = () => connection.abort();
      this.stopped.signal.addEventListener("abort", abort);
      let stall;
      const quiet = () => {
        clearTimeout(stall);
        stall = setTimeout(abort, STALL_MS);
      };
      try {
        quiet();
        response ??= await this.attach(connection.signal);
        if (response.status === 204) return this.handlers.gone?.(204); // finished, all read
        if (response.status === 404) return this.handlers.gone?.(404); // deleted meanwhile
        if (response.ok) {
          this.handlers.connection?.("live");
          for await (const event of readEvents(response.body, { onBytes: quiet })) {
            attempt = 0;
            if (this.handle(event)) return;
          }
        }
      } catch {
        // a dropped or stalled connection: attach again below
      } finally {
        clearTimeout(stall);
        this.stopped.signal.removeEventListener("abort", abort);
      }
      response = null;
      if (this.stopped.signal.aborted) return;
      this.handlers.connection?.("reconnecting");
      await sleep(backoff(attempt++), this.stopped.signal);
    }
  }

  attach(signal) {
    const headers = this.lastId ? { "last-event-id": this.lastId } : {};
    return request(`api/messages/${this.messageId}/stream`, { headers, signal });
  }

  // Whether the event ended the reply.
  handle(event) {
    if (event.id) this.lastId = event.id;
    const data = dataOf(event) ?? {};
    switch (event.event) {
      case "start":
        this.handlers.start?.(data);
        return false;
      case "token":
        this.handlers.token?.(data.text ?? "");
        return false;
      case "reset":
        this.handlers.reset?.();
        return false;
      case "provider":
        this.handlers.provider?.(data);
        return false;
      case "done":
      case "error":
        this.ended = true;
        this.handlers.end?.(event.event, data);
        return true;
      default:
        return false;
    }
  }
}
