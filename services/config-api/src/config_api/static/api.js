// The config API client: every call carries the signed-in user's bearer token, and every
// failure becomes an ApiError that knows its status and the fields the API named.
"use strict";

const TOKEN_KEY = "email-channels-token";
const SESSION_KEY = "email-channels-session"; // { method, expiresAt, user } of the token

export class ApiError extends Error {
  constructor(status, body) {
    super(describe(status, body));
    this.status = status;
    this.body = body;
    this.problems = problemsOf(body);
  }
}

// 422 bodies list their problems under `detail` (FastAPI style, with `field` or `loc`) or
// under `errors` (problem+json style); anything else is one message for the whole request.
function problemsOf(body) {
  const list = Array.isArray(body?.detail) ? body.detail : Array.isArray(body?.errors) ? body.errors : [];
  return list.map((p) => ({
    field: p.field ?? (Array.isArray(p.loc) ? p.loc.filter((part) => part !== "body").join(".") : ""),
    message: p.msg ?? p.message ?? p.detail ?? "invalid",
  }));
}

function describe(status, body) {
  const problems = problemsOf(body);
  if (problems.length) return problems.map((p) => (p.field ? `${p.field}: ${p.message}` : p.message)).join("\n");
  if (typeof body?.detail === "string") return body.detail;
  if (typeof body?.title === "string") return body.title;
  if (status === 0) return "The server cannot be reached.";
  return `The request failed (HTTP ${status}).`;
}

export class Api {
  constructor(base) {
    this.base = base;
    this.token = sessionStorage.getItem(TOKEN_KEY);
    this.session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null") ?? { method: "token" };
    this.onUnauthorised = () => {};
  }

  get signedIn() {
    return Boolean(this.token);
  }

  // `session`: how the token was obtained ("token" typed in, or "oidc" with its expiry and
  // the user's name from the identity token).
  signIn(token, session = { method: "token" }) {
    this.token = token;
    this.session = session;
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  }

  signOut() {
    this.token = null;
    this.session = { method: "token" };
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(SESSION_KEY);
  }

  async call(method, path, body, { signal, quietUnauthorised = false } = {}) {
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(`${this.base}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, {});
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => ({}));
    if (response.status === 401 && !quietUnauthorised) this.onUnauthorised();
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  get(path, options) {
    return this.call("GET", path, undefined, options);
  }

  post(path, body, options) {
    return this.call("POST", path, body, options);
  }

  put(path, body, options) {
    return this.call("PUT", path, body, options);
  }

  delete(path, options) {
    return this.call("DELETE", path, undefined, options);
  }
}

// Path segment of an id (ids are restricted by the API, but never trust that here).
export const seg = (id) => encodeURIComponent(id);
