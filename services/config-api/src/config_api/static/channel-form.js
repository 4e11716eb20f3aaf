// The create / edit window of a channel: its fields, the Receiving and Sending sections with
// each type's fields, Validate per section (up to 60 s, then each step's result), Save.
"use strict";

import { seg } from "./api.js";
import { fillCampaignSelect } from "./campaigns.js";
import { $, $$, clearErrors, confirmAction, el, formatTime, say, showErrors, wireDialog } from "./dom.js";

const VALIDATE_BOUND_S = 60;
export const AUTHORISING_KEY = "email-channels-authorising"; // channel id of a started sign-in
const SECRET_FIELDS = { inbound: ["password", "client_secret"], outbound: ["password", "client_secret"] };

let api;
let reloadList;
let dialog;
let form;
let current = null; // the channel being edited (as the API returned it), null when new
let validation = null; // AbortController of a running validate
let dirty = false; // changed since the window opened

// --- showing the right fields ---------------------------------------------------------------------

function kindOf(direction) {
  return form.elements[`${direction}.kind`].value;
}

function showKinds(section) {
  const kind = $("[data-kind-select]", section).value;
  for (const node of $$("[data-kinds]", section)) {
    if (node.tagName === "OPTION") continue;
    node.hidden = !kind || !node.dataset.kinds.split(" ").includes(kind);
  }
  // After-fetch choices differ: POP3 cannot move a message.
  const after = $("[name='inbound.after_fetch']", section);
  if (after) {
    for (const option of after.options) {
      if (option.dataset.kinds) option.hidden = option.disabled = !option.dataset.kinds.split(" ").includes(kind);
    }
    if (after.selectedOptions[0]?.disabled) after.value = kind === "pop3" ? "delete" : "mark_seen";
    showMoveFolder(section);
  }
}

function showMoveFolder(section) {
  const after = $("[name='inbound.after_fetch']", section);
  const move = $("[data-after='move']", section);
  if (after && move && !move.hidden) move.hidden = after.value !== "move";
}

// The activation checkbox can only be checked once a default campaign is chosen.
function syncActivation() {
  const enabled = form.elements.enabled;
  const hasCampaign = Boolean(form.elements.default_campaign_id.value);
  enabled.disabled = !hasCampaign;
  if (!hasCampaign) enabled.checked = false;
  $("#ch-enabled-hint").textContent = hasCampaign
    ? "Mail is fetched and routed while the channel is activated."
    : "Choose a default campaign first: only then can the channel be activated.";
}

// Password fields are write-only: the API says only whether one is set.
function showSecretState(direction, server) {
  for (const name of SECRET_FIELDS[direction]) {
    const input = form.elements[`${direction}.${name}`];
    if (!input) continue;
    const isSet = Boolean(server && server.kind === kindOf(direction) && server[`${name}_set`]);
    input.value = "";
    input.placeholder = isSet ? "set — leave empty to keep it" : "not set";
    const id = `${input.id}-state`;
    let note = document.getElementById(id);
    if (!note) {
      note = el("p", { class: "hint secret-state", id });
      input.after(note);
      input.setAttribute("aria-describedby", `${input.getAttribute("aria-describedby") || ""} ${id}`.trim());
    }
    const stored = isSet ? "A value is set (never shown). Type a new one to replace it." : "Not set.";
    note.textContent = stored;
    input.oninput = () => {
      note.textContent = input.value ? "The value typed here will be saved." : stored;
    };
  }
}

// --- filling and reading the form -----------------------------------------------------------------

function setValue(name, value) {
  const control = form.elements[name];
  if (!control) return;
  if (control.type === "checkbox") control.checked = Boolean(value);
  else if (control.tagName === "TEXTAREA" && Array.isArray(value)) control.value = value.join("\n");
  else control.value = value ?? "";
}

function fill(channel) {
  form.reset();
  fillCampaignSelect(form.elements.default_campaign_id, "(none)");
  setValue("name", channel?.name);
  setValue("email_address", channel?.email_address);
  setValue("default_campaign_id", channel?.default_campaign_id);
  setValue("enabled", channel?.enabled);
  setValue("sync_recipient_only", channel?.sync_recipient_only);
  for (const direction of ["inbound", "outbound"]) {
    const server = channel?.[direction];
    setValue(`${direction}.kind`, server?.kind ?? "");
    // Kept-as-saved settings (hidden inputs) are not reset by form.reset(): start from defaults.
    for (const kept of $$(`input[type=hidden][name^='${direction}.']`, form)) kept.value = kept.dataset.default ?? "";
    for (const [key, value] of Object.entries(server ?? {})) {
      if (key === "kind" || key.endsWith("_set")) continue;
      setValue(`${direction}.${key}`, value);
    }
    if (!server) setValue(`${direction}.verify_tls`, true);
    if (direction === "inbound" && !server?.folders) setValue("inbound.folders", ["INBOX"]);
    showKinds($(`#${direction}-section`));
    showSecretState(direction, server);
    $(`#${direction}-section .validate-result`).replaceChildren();
  }
  syncActivation();
  showAuthorisation();
}

// --- Exchange Online delegated sign-in ("Save and authorise") ---------------------------------

const delegated = (direction) => kindOf(direction) === "graph" && form.elements[`${direction}.auth`].value === "delegated";

// Whether each Exchange section is authorised, where Microsoft must send the answer, and the
// "Save and authorise" button while a section signs in as a user.
function showAuthorisation() {
  for (const direction of ["inbound", "outbound"]) {
    const section = $(`#${direction}-section`);
    const state = $("[data-auth-state]", section);
    const hint = $("[data-redirect-hint]", section);
    if (!delegated(direction)) {
      state.textContent = "";
      hint.textContent = "";
      continue;
    }
    const saved = current?.[direction];
    const sameApp = saved?.kind === "graph" && saved.auth === "delegated";
    state.textContent = sameApp && saved.authorised
      ? `Authorised by ${saved.authorised_by ?? "an administrator"} on ${formatTime(saved.authorised_at)}.`
      : "Not authorised yet: use Save and authorise to sign in with Microsoft.";
    state.classList.toggle("ok", Boolean(sameApp && saved.authorised));
    const redirect = form.elements[`${direction}.redirect_uri`].value || new URL("oauth/callback", document.baseURI).href;
    hint.textContent = `Register this redirect URI for the app in Azure (Web platform): ${redirect}`;
  }
  $("#save-authorise").hidden = !(delegated("inbound") || delegated("outbound"));
}

async function saveAndAuthorise() {
  const summary = $("#channel-form-error");
  const button = $("#save-authorise");
  clearErrors(form, summary);
  button.disabled = true;
  try {
    current = await persist();
    dirty = false;
    const started = await api.post(`/channels/${seg(current.id)}/authorise`);
    // The page shows an outcome coming back only for a sign-in started in this tab.
    sessionStorage.setItem(AUTHORISING_KEY, current.id);
    say("Opening the Microsoft sign-in…", "info");
    location.assign(started.authorization_url); // back through the API's callback to this page
  } catch (error) {
    showErrors(form, error, summary);
    button.disabled = false;
  }
}

function readControl(control) {
  if (control.type === "checkbox") return control.checked;
  const text = control.value.trim();
  if (control.type === "number") return text === "" ? null : Number(text);
  if (control.name === "inbound.folders") return text.split("\n").map((f) => f.trim()).filter(Boolean);
  return text === "" ? null : text;
}

// One section's settings as the API takes them, or null when not set up. Empty secrets are
// left out, which keeps the stored ones.
function server(direction) {
  const kind = kindOf(direction);
  if (!kind) return null;
  const body = { kind };
  const section = $(`#${direction}-section`);
  for (const control of form.elements) {
    const [prefix, key] = control.name.split(".");
    if (prefix !== direction || key === "kind" || control.closest("[hidden]") || !section.contains(control)) continue;
    if (control.dataset.secret !== undefined) {
      if (control.value !== "") body[key] = control.value; // never trimmed: the API says why
      continue;
    }
    body[key] = readControl(control);
  }
  if (body.after_fetch !== "move") delete body.move_to_folder;
  return body;
}

function body() {
  const value = (name) => readControl(form.elements[name]);
  return {
    name: form.elements.name.value,
    email_address: value("email_address"),
    default_campaign_id: value("default_campaign_id"),
    enabled: form.elements.enabled.checked,
    sync_recipient_only: form.elements.sync_recipient_only.checked,
    inbound: server("inbound"),
    outbound: server("outbound"),
  };
}

// --- save -----------------------------------------------------------------------------------------

function persist() {
  return current
    ? api.put(`/channels/${seg(current.id)}`, { ...body(), revision: current.revision })
    : api.post("/channels", body());
}

async function save(event) {
  event.preventDefault();
  const summary = $("#channel-form-error");
  clearErrors(form, summary);
  const submit = $("button[type=submit]", form);
  submit.disabled = true;
  try {
    const saved = await persist();
    current = saved;
    dialog.close();
    say(`Channel "${saved.name}" saved.`, "info");
    await reloadList();
  } catch (error) {
    if (error.status === 409 && current) {
      error.problems = [];
      error.message = "Someone changed this channel meanwhile. Close this window and open it again to see their change.";
    }
    showErrors(form, error, summary);
  } finally {
    submit.disabled = false;
  }
}

// --- validate -------------------------------------------------------------------------------------

// One step of a probe (dns, tcp, tls, auth, folder:INBOX, mail_from, ...): passed or failed,
// how long it took, and the server's or our message.
function stepLine(step) {
  const seconds = step.elapsed_ms / 1000;
  return el(
    "li",
    { class: step.ok ? "ok" : "failed" },
    el("span", { class: "mark", "aria-hidden": "true" }, step.ok ? "✓" : "✗"),
    el("strong", {}, step.name),
    el("span", { class: "visually-hidden" }, step.ok ? " passed" : " failed"),
    Number.isFinite(seconds) ? el("span", { class: "took" }, seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(1)} s`) : null,
    step.message && step.message !== "ok" ? el("span", { class: "detail" }, step.message) : null,
  );
}

function showValidation(box, result, direction) {
  const report = result[direction];
  if (!report) {
    box.replaceChildren(el("p", { class: "validate-headline failed", role: "status" }, "Nothing to validate: this section is not set up."));
    return;
  }
  const steps = report.steps ?? [];
  const headline = report.ok
    ? "Validated: every step passed."
    : `Failed at step "${report.failing_step}": ${report.message}`;
  const ok = report.ok;
  box.replaceChildren(
    el("p", { class: `validate-headline ${ok ? "ok" : "failed"}`, role: "status" }, headline),
    el("ol", { class: "steps" }, steps.map(stepLine)),
  );
}

async function validate(direction, button) {
  const section = $(`#${direction}-section`);
  const box = $(".validate-result", section);
  validation?.abort();
  const controller = new AbortController();
  validation = controller;
  const started = performance.now();
  const progress = el("progress", { max: VALIDATE_BOUND_S, value: 0, "aria-label": `Validating ${direction === "inbound" ? "receiving" : "sending"}` });
  const label = el("span", { class: "elapsed" }, "Contacting the server…");
  box.replaceChildren(el("div", { class: "validate-progress" }, progress, label));
  const tick = setInterval(() => {
    const seconds = Math.min(VALIDATE_BOUND_S, (performance.now() - started) / 1000);
    progress.value = seconds;
    label.textContent = `Checking… ${Math.floor(seconds)} s (at most ${VALIDATE_BOUND_S} s)`;
  }, 250);
  const guard = setTimeout(() => controller.abort(), (VALIDATE_BOUND_S + 5) * 1000);
  button.disabled = true;
  clearErrors(form, $("#channel-form-error"));
  try {
    // A saved channel shown unchanged is validated as saved, and the outcome becomes its
    // status in the list; settings being edited are tried without recording anything.
    const recorded = current && !dirty;
    const result = recorded
      ? await api.post(`/channels/${seg(current.id)}/validate`, undefined, { signal: controller.signal })
      : await api.post(
        "/channels/validate",
        { channel_id: current?.id ?? null, email_address: readControl(form.elements.email_address), [direction]: server(direction) },
        { signal: controller.signal },
      );
    showValidation(box, result, direction);
    if (recorded) {
      // The saved channel was validated as a whole: show the other section's result too.
      const other = direction === "inbound" ? "outbound" : "inbound";
      if (result[other]) showValidation($(`#${other}-section .validate-result`), result, other);
      reloadList().catch(() => {});
    }
    else if (current) box.append(el("p", { class: "hint" }, "Tried the settings as typed; the channel's status changes once they are saved and validated."));
  } catch (error) {
    if (error.name === "AbortError") {
      box.replaceChildren(el("p", { class: "validate-headline failed", role: "status" }, `No answer within ${VALIDATE_BOUND_S} s.`));
    } else {
      box.replaceChildren();
      showErrors(form, error, $("#channel-form-error"));
    }
  } finally {
    clearInterval(tick);
    clearTimeout(guard);
    button.disabled = false;
    if (validation === controller) validation = null;
  }
}

// --- which server types this API takes ------------------------------------------------------------

// The API's OpenAPI document says which inbound / outbound kinds a channel may have; a type
// the server does not take yet is shown but cannot be chosen.
let supportedKinds = null;

async function loadSupportedKinds() {
  const response = await fetch("openapi.json", { cache: "no-store" }).catch(() => null);
  if (!response?.ok) return null;
  const doc = await response.json().catch(() => null);
  const schemas = doc?.components?.schemas;
  const channelIn = schemas?.ChannelIn?.properties;
  if (!channelIn) return null;
  const kinds = (property) => {
    const refs = JSON.stringify(channelIn[property] ?? {}).match(/#\/components\/schemas\/[A-Za-z0-9_.-]+/g) ?? [];
    return new Set(
      refs.map((ref) => {
        const kind = schemas[ref.split("/").pop()]?.properties?.kind;
        return kind?.const ?? kind?.enum?.[0] ?? kind?.default;
      }).filter(Boolean),
    );
  };
  return { inbound: kinds("inbound"), outbound: kinds("outbound") };
}

function offerSupportedKinds(kinds) {
  if (!kinds) return;
  for (const direction of ["inbound", "outbound"]) {
    for (const option of form.elements[`${direction}.kind`].options) {
      if (!option.value || kinds[direction].size === 0) continue;
      const offered = kinds[direction].has(option.value);
      option.disabled = !offered;
      option.textContent = option.textContent.replace(/ \(not available on this server yet\)$/, "") + (offered ? "" : " (not available on this server yet)");
    }
  }
}

// --- opening --------------------------------------------------------------------------------------

export async function openChannel(channel) {
  // Edit the channel as it is now, not as the list showed it a while ago.
  current = channel ? await api.get(`/channels/${seg(channel.id)}`) : null;
  supportedKinds ??= loadSupportedKinds();
  offerSupportedKinds(await supportedKinds);
  $("#channel-dialog-title").textContent = current ? `Edit channel ${current.name}` : "New channel";
  clearErrors(form, $("#channel-form-error"));
  fill(current);
  dirty = false;
  dialogControl.open();
  form.elements.name.focus();
}

let dialogControl;

export function setUpChannelForm(client, afterSave) {
  api = client;
  reloadList = afterSave;
  dialog = $("#channel-dialog");
  form = $("#channel-form");
  dialogControl = wireDialog(
    dialog,
    () => validation?.abort(),
    async () => !dirty || confirmAction("Your changes to this channel are not saved.", "Discard changes", "Discard your changes?"),
  );
  form.addEventListener("submit", save);
  form.addEventListener("input", () => { dirty = true; });
  form.elements.default_campaign_id.addEventListener("change", syncActivation);
  for (const select of $$("[data-kind-select]", form)) {
    select.addEventListener("change", () => {
      const section = select.closest("fieldset");
      showKinds(section);
      const direction = section.dataset.direction;
      showSecretState(direction, current?.[direction]);
      $(".validate-result", section).replaceChildren();
    });
  }
  form.elements["inbound.after_fetch"].addEventListener("change", () => showKinds($("#inbound-section")));
  form.addEventListener("change", showAuthorisation);
  $("#save-authorise").addEventListener("click", saveAndAuthorise);
  for (const button of $$("[data-validate]", form)) {
    button.addEventListener("click", () => validate(button.dataset.validate, button));
  }
}
