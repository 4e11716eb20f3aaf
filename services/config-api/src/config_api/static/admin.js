// Admin page entry: sign-in, the two sections (#channels, #campaigns), readiness.
// Every screen only calls the config API (relative URLs, so the page works behind a prefix).
"use strict";

import { Api, seg } from "./api.js";
import { loadCampaigns, onCampaignsChanged, setUpCampaigns } from "./campaigns.js";
import { AUTHORISING_KEY, openChannel, setUpChannelForm } from "./channel-form.js";
import { loadChannels, refreshCampaignChoices, setUpChannels } from "./channels.js";
import { $, clearErrors, say, showErrors } from "./dom.js";
import { openFilters, setUpFilters } from "./filters.js";
import { finishSignIn, loadSignInOptions, startSignIn } from "./oidc.js";

const api = new Api("api/v1");
const VIEWS = ["channels", "campaigns"];
const EXPIRED = "Your sign-in has expired or was revoked: please sign in again.";
let signInOptions = { methods: ["token"], oidc: null };
let expiryTimer;
let authoriseOutcome = null; // the Exchange sign-in's outcome the API's callback brought back

function showView(name) {
  for (const view of ["sign-in", ...VIEWS]) $(`#${view}-view`).hidden = view !== name;
  $("#sections").hidden = name === "sign-in";
  $("#sign-out").hidden = name === "sign-in" || !api.signedIn;
  for (const view of VIEWS) {
    const link = $(`#nav-${view}`);
    if (view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  const name = location.hash.slice(1);
  showView(VIEWS.includes(name) ? name : "channels");
}

// The sign-in screen, with why it is shown (an expired session, a refused OIDC answer).
function showSignIn(reason, kind = "error") {
  clearTimeout(expiryTimer);
  showView("sign-in");
  const message = $("#sign-in-message");
  message.textContent = reason ?? "";
  message.className = kind;
  message.hidden = !reason;
  $("#oidc-sign-in").hidden = !signInOptions.oidc;
  (signInOptions.oidc ? $("#oidc-button") : $("#token")).focus();
}

async function signInWithOidc() {
  const button = $("#oidc-button");
  button.disabled = true;
  try {
    await startSignIn(signInOptions.oidc, location.hash);
  } catch (error) {
    button.disabled = false;
    showSignIn(error.message);
  }
}

// An OIDC token ends at its expiry: back to the sign-in screen, saying so.
function watchExpiry() {
  clearTimeout(expiryTimer);
  const at = api.session?.expiresAt;
  if (!at) return;
  expiryTimer = setTimeout(() => {
    api.signOut();
    for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
    $("#whoami").hidden = true;
    showSignIn("Your sign-in has expired: please sign in again.");
  }, Math.max(0, at - Date.now()));
}

async function signIn(event) {
  event.preventDefault();
  const form = event.target;
  const token = form.elements.token.value.trim();
  clearErrors(form);
  if (!token) {
    showErrors(form, { problems: [{ field: "token", message: "Enter a token." }] });
    return;
  }
  api.signIn(token, { method: "token" });
  try {
    await api.get("/me", { quietUnauthorised: true });
  } catch (error) {
    api.signOut();
    const message = error.status === 401 ? "This token is not accepted (unknown, revoked or expired)." : error.message;
    showErrors(form, { problems: [{ field: "token", message }] });
    return;
  }
  form.reset();
  say("");
  await start();
}

function signOut() {
  clearTimeout(expiryTimer);
  api.signOut();
  $("#whoami").hidden = true;
  say("");
  showSignIn();
}

async function loadReadiness() {
  const badge = $("#ready");
  const response = await fetch("readyz", { cache: "no-store" }).catch(() => null);
  const data = response ? await response.json().catch(() => ({})) : {};
  const ready = Boolean(response?.ok);
  badge.textContent = ready ? "ready" : "not ready";
  badge.className = `badge ${ready ? "ready" : "not-ready"}`;
  badge.title = data.reason || "";
  return ready;
}

// Who is signed in, and with which role: a viewer sees no write controls (the API refuses
// their writes anyway). An API without sign-in has no /me: everything is shown.
async function loadWhoAmI() {
  const who = $("#whoami");
  try {
    const me = await api.get("/me");
    who.textContent = `${api.session?.user || me.subject} (${me.role})`;
    who.hidden = false;
    document.body.classList.toggle("viewer", me.role !== "admin");
  } catch (error) {
    if (error.status !== 404) throw error;
    who.hidden = true;
    document.body.classList.remove("viewer");
  }
}

async function start() {
  if (!(await loadReadiness())) {
    setTimeout(start, 2000);
    return;
  }
  try {
    await loadWhoAmI();
    await loadCampaigns();
  } catch (error) {
    if (error.status === 401) return; // onUnauthorised shows the sign-in
    if (error.status === 403 && api.signedIn) {
      // Signed in, but with no role here (the token's role claim holds neither).
      api.signOut();
      showSignIn(error.message);
      return;
    }
    say(error.message);
    return;
  }
  watchExpiry();
  route();
  await loadChannels().catch((error) => say(error.message));
  if (authoriseOutcome) await showAuthoriseOutcome(authoriseOutcome);
}

// "Save and authorise" ends here: the API's callback sends the browser back with
// ?authorised=<id> or ?authorise_error=<message>&channel=<id>. Say how it went and reopen the
// channel, which shows whether it is authorised.
function takeAuthoriseOutcome() {
  const query = new URLSearchParams(location.search);
  if (!query.has("authorised") && !query.has("authorise_error")) return null;
  history.replaceState(null, "", `${location.pathname}${location.hash}`);
  const started = sessionStorage.getItem(AUTHORISING_KEY);
  sessionStorage.removeItem(AUTHORISING_KEY);
  const channelId = query.get("authorised") ?? query.get("channel");
  // Only for a sign-in started in this tab: a crafted link cannot put its text on the page.
  if (!started || started !== channelId) return null;
  return { channelId, error: query.get("authorise_error") };
}

async function showAuthoriseOutcome(outcome) {
  authoriseOutcome = null;
  const channel = outcome.channelId ? await api.get(`/channels/${seg(outcome.channelId)}`).catch(() => null) : null;
  const name = channel ? `"${channel.name}"` : "the channel";
  if (outcome.error) say(`The Microsoft sign-in for ${name} did not complete: ${outcome.error}`);
  else say(`Exchange Online access for ${name} is authorised.`, "info");
  if (channel && !document.body.classList.contains("viewer")) await openChannel(channel).catch((e) => say(e.message));
}

document.addEventListener("DOMContentLoaded", () => {
  api.onUnauthorised = () => {
    const hadToken = api.signedIn;
    api.signOut();
    for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
    showSignIn(hadToken ? EXPIRED : null);
  };
  setUpCampaigns(api);
  setUpChannels(api, { edit: (c) => openChannel(c).catch((e) => say(e.message)), filters: (c) => openFilters(c).catch((e) => say(e.message)) });
  setUpChannelForm(api, loadChannels);
  setUpFilters(api, loadChannels);
  onCampaignsChanged(refreshCampaignChoices);
  $("#new-channel").addEventListener("click", () => openChannel(null).catch((e) => say(e.message)));
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#oidc-button").addEventListener("click", signInWithOidc);
  window.addEventListener("hashchange", () => {
    if (!$("#sign-in-view").hidden) return;
    route();
    $("#main").focus();
  });
  boot();
});

// Learn how this API signs in, take an OIDC answer in the address if there is one, then start.
async function boot() {
  signInOptions = await loadSignInOptions();
  authoriseOutcome = takeAuthoriseOutcome();
  try {
    const session = await finishSignIn();
    if (session) api.signIn(session.token, { method: "oidc", expiresAt: session.expiresAt, user: session.user });
  } catch (error) {
    api.signOut();
    showSignIn(error.message);
    return;
  }
  if (api.session?.expiresAt && api.session.expiresAt <= Date.now()) {
    api.signOut();
    showSignIn("Your sign-in has expired: please sign in again.");
    return;
  }
  start();
}
