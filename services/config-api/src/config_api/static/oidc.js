// OIDC sign-in of the admin page: the authorization code flow with PKCE, as a public client
// (no secret in the page). The API says which provider and client (GET auth/config); the page
// discovers the endpoints, sends the browser to the provider with state, nonce and a code
// challenge, and on the way back checks the state, redeems the code with the verifier, checks
// the id token's nonce, issuer and audience, and keeps the access token for the API calls.
// The API verifies that token's signature, audience and role claim itself.
"use strict";

const PENDING_KEY = "email-channels-oidc-pending";

export class SignInError extends Error {}

// How this API can be signed in to: { methods: ["oidc", "token"], oidc: {...} | null }.
export async function loadSignInOptions() {
  const response = await fetch("auth/config", { cache: "no-store" }).catch(() => null);
  if (!response?.ok) return { methods: ["token"], oidc: null };
  return response.json().catch(() => ({ methods: ["token"], oidc: null }));
}

function b64url(bytes) {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(size = 32) {
  return b64url(crypto.getRandomValues(new Uint8Array(size)));
}

async function codeChallenge(verifier) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return b64url(new Uint8Array(digest));
}

// The JWT's claims, unverified: only to check nonce/issuer/audience and to show the user's
// name. Trust comes from the API, which verifies the access token against the provider's keys.
function claimsOf(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const text = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
    return JSON.parse(text);
  } catch {
    return null;
  }
}

async function discover(issuer) {
  const url = `${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
  const response = await fetch(url, { cache: "no-store" }).catch(() => null);
  if (!response?.ok) throw new SignInError(`The identity provider cannot be reached (${url}).`);
  const provider = await response.json().catch(() => ({}));
  if (provider.issuer !== issuer || !provider.authorization_endpoint || !provider.token_endpoint) {
    throw new SignInError("The identity provider's discovery document does not match the configured issuer.");
  }
  return provider;
}

// Send the browser to the provider; `returnTo` is the page's #section to come back to.
export async function startSignIn(oidc, returnTo = "") {
  const provider = await discover(oidc.issuer);
  const pending = {
    state: randomText(),
    nonce: randomText(),
    verifier: randomText(48),
    redirectUri: `${location.origin}${oidc.redirect_path}`,
    tokenEndpoint: provider.token_endpoint,
    issuer: oidc.issuer,
    clientId: oidc.client_id,
    returnTo,
  };
  sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
  const url = new URL(provider.authorization_endpoint);
  for (const [key, value] of Object.entries({
    response_type: "code",
    response_mode: "query",
    client_id: oidc.client_id,
    redirect_uri: pending.redirectUri,
    scope: oidc.scopes,
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: await codeChallenge(pending.verifier),
    code_challenge_method: "S256",
  })) url.searchParams.set(key, value);
  location.assign(url.href);
}

// The provider's answer in this page's address, if any: null when there is none; the session
// ({ token, expiresAt, user }) when the sign-in worked; a SignInError saying why not.
export async function finishSignIn() {
  const answer = new URLSearchParams(location.search);
  if (!answer.has("state") || !(answer.has("code") || answer.has("error"))) return null;
  const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || "null");
  sessionStorage.removeItem(PENDING_KEY);
  // The code is single-use and must not stay in the address bar or the history.
  history.replaceState(null, "", `${location.pathname}${pending?.returnTo ?? ""}`);
  if (!pending || answer.get("state") !== pending.state) {
    throw new SignInError("This sign-in answer does not belong to a sign-in started in this tab: please sign in again.");
  }
  if (answer.has("error")) {
    const why = (answer.get("error_description") || answer.get("error")).split("\n")[0];
    throw new SignInError(`The identity provider refused the sign-in: ${why}`);
  }
  const response = await fetch(pending.tokenEndpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: answer.get("code"),
      redirect_uri: pending.redirectUri,
      client_id: pending.clientId,
      code_verifier: pending.verifier,
    }),
    cache: "no-store",
  }).catch(() => null);
  if (!response) throw new SignInError("The identity provider's token endpoint cannot be reached.");
  const tokens = await response.json().catch(() => ({}));
  if (!response.ok || !tokens.access_token) {
    const why = String(tokens.error_description || tokens.error || `HTTP ${response.status}`).split("\n")[0];
    throw new SignInError(`The sign-in could not be completed: ${why}`);
  }
  const claims = tokens.id_token ? claimsOf(tokens.id_token) : {};
  const audiences = [].concat(claims?.aud ?? []);
  if (tokens.id_token && (!claims || claims.nonce !== pending.nonce || claims.iss !== pending.issuer || !audiences.includes(pending.clientId))) {
    throw new SignInError("The identity token does not belong to this sign-in (nonce, issuer or audience): please sign in again.");
  }
  return {
    token: tokens.access_token,
    expiresAt: Date.now() + Number(tokens.expires_in || 3600) * 1000,
    user: claims?.preferred_username || claims?.email || claims?.name || null,
  };
}
