// Server-Sent Events read from a fetch() body, as they arrive.
//
// EventSource cannot POST or send an Authorization header, so every stream the page
// reads (a reply, a feed) is a fetch whose body goes through this parser. It follows
// the WHATWG rules: lines end in LF, CRLF or CR; a block ends at a blank line; `:`
// starts a comment (our `: ping` heartbeat); `id` sticks until changed; a block with
// no data is not an event.

export async function* readEvents(body, { onBytes } = {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let block = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onBytes?.();
      buffer += value;
      let start = 0;
      for (;;) {
        const match = /\r\n|\r|\n/g;
        match.lastIndex = start;
        const found = match.exec(buffer);
        if (!found) break;
        // A CR at the very end may be the first half of a CRLF: wait for the next read.
        if (found[0] === "\r" && found.index === buffer.length - 1) break;
        const line = buffer.slice(start, found.index);
        start = found.index + found[0].length;
        if (line === "") {
          if (block.data.length) yield { event: block.event, data: block.data.join("\n"), id: block.id };
          block = { event: "message", data: [], id: block.id };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (name === "event") block.event = value;
          else if (name === "data") block.data.push(value);
          else if (name === "id" && !value.includes("\0")) block.id = value;
        }
      }
      buffer = buffer.slice(start);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// The JSON of an event's data, or null when it is not JSON.
export function dataOf(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}
