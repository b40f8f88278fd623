// Calls to the sidechat API, relative to the page so that it works under a path prefix.
//
// When the API answers 401, the page asks for a token (the `askToken` hook, set by
// the page), keeps it in localStorage, and tries again.

const TOKEN_KEY = "sidechat.token";

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `the server answered ${status}`);
    this.status = status;
    this.type = error?.type || "http";
    this.detail = error || {};
  }
}

export const auth = {
  askToken: async () => null, // replaced by the page: resolves to a token, or null
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  },
};

let asking = null; // one prompt at a time, however many calls were refused

async function newToken(refused) {
  if (auth.token && auth.token !== refused) return auth.token; // another call got one already
  asking ??= auth.askToken(Boolean(refused)).finally(() => {
    asking = null;
  });
  const token = await asking;
  auth.token = token;
  return token;
}

// fetch() with the token, asking for a new one on 401; the raw Response.
export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  for (;;) {
    const sent = auth.token;
    const response = await fetch(path, {
      method,
      signal,
      headers: {
        ...(body !== undefined && { "content-type": "application/json" }),
        ...(sent && { authorization: `Bearer ${sent}` }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (response.status !== 401) return response;
    await response.body?.cancel();
    if (!(await newToken(sent))) throw new ApiError(401, { message: "a token is needed" });
  }
}

// The JSON answer of a call, or an ApiError with the server's message.
export async function call(path, options) {
  const response = await request(path, options);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data?.error);
  return data;
}

export async function errorOf(response) {
  const data = await response.json().catch(() => null);
  return new ApiError(response.status, data?.error);
}
