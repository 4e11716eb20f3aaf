// Admin page: lists channels and campaigns through the config API. Data is only ever put into
// the page as text (never as HTML). URLs are relative so the page works behind a path prefix.
"use strict";

const API = "api/v1";
const $ = (selector) => document.querySelector(selector);
let campaigns = [];

async function call(method, path, body) {
  const response = await fetch(`${API}${path}`, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(describeError(response.status, data));
  return data;
}

function describeError(status, data) {
  if (Array.isArray(data.detail)) {
    return data.detail.map((e) => `${e.field || e.loc.join(".")}: ${e.msg}`).join("\n");
  }
  return `${status}: ${data.detail || "request failed"}`;
}

function say(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function button(label, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

// A channel as returned by GET, turned back into a PUT body. Passwords are write-only and
// omitted, which keeps the stored ones.
function updateBody(channel, changes) {
  const server = (s) => {
    if (!s) return null;
    const { password_set: _ignored, ...rest } = s;
    return rest;
  };
  return {
    name: channel.name,
    email_address: channel.email_address,
    default_campaign_id: channel.default_campaign_id,
    enabled: channel.enabled,
    sync_recipient_only: channel.sync_recipient_only,
    inbound: server(channel.inbound),
    outbound: server(channel.outbound),
    revision: channel.revision,
    ...changes,
  };
}

async function toggle(channel) {
  try {
    await call("PUT", `/channels/${encodeURIComponent(channel.id)}`,
      updateBody(channel, { enabled: !channel.enabled }));
    say("");
  } catch (error) {
    say(error.message);
  }
  await loadChannels();
}

async function remove(channel) {
  if (!confirm(`Delete channel "${channel.name}" and its filters permanently?`)) return;
  try {
    await call("DELETE",
      `/channels/${encodeURIComponent(channel.id)}?revision=${channel.revision}`);
    say(`Channel "${channel.name}" deleted.`, "info");
  } catch (error) {
    say(error.message);
  }
  await loadChannels();
}

async function loadChannels() {
  const q = $("#search").value.trim();
  const data = await call("GET", `/channels${q ? `?q=${encodeURIComponent(q)}` : ""}`);
  const body = $("#channels");
  body.replaceChildren();
  for (const channel of data.items) {
    const row = body.insertRow();
    cell(row, channel.name);
    cell(row, channel.email_address);
    const status = cell(row, "");
    const badge = document.createElement("span");
    badge.className = `badge ${channel.status.state}`;
    badge.textContent = channel.status.state;
    badge.title = [channel.status.reason, channel.status.at].filter(Boolean).join(" — ");
    status.append(badge);
    cell(row, channel.default_campaign_name || channel.default_campaign_id || "—");
    cell(row, String(channel.filter_count));
    cell(row, channel.enabled ? "yes" : "no");
    const actions = cell(row, "", "actions");
    actions.append(
      button(channel.enabled ? "Disable" : "Enable", () => toggle(channel)),
      " ",
      button("Delete", () => remove(channel), "danger"),
    );
  }
  $("#channels-empty").hidden = data.items.length > 0;
}

async function loadCampaigns() {
  const data = await call("GET", "/campaigns");
  campaigns = data.items;
  const body = $("#campaigns");
  body.replaceChildren();
  for (const campaign of campaigns) {
    const row = body.insertRow();
    cell(row, campaign.name);
    cell(row, campaign.id);
  }
  $("#campaigns-empty").hidden = campaigns.length > 0;
  const select = $("#new-channel select[name=default_campaign_id]");
  select.replaceChildren(new Option("(none)", ""));
  for (const campaign of campaigns) select.append(new Option(campaign.name, campaign.id));
}

async function loadReadiness() {
  const badge = $("#ready");
  const response = await fetch("readyz");
  const data = await response.json().catch(() => ({}));
  badge.textContent = response.ok ? "ready" : "not ready";
  badge.className = `badge ${response.ok ? "ready" : "not-ready"}`;
  badge.title = data.reason || "";
  return response.ok;
}

function formValues(form) {
  const values = Object.fromEntries(new FormData(form));
  for (const [key, value] of Object.entries(values)) {
    if (typeof value === "string" && value.trim() === "") values[key] = null;
  }
  return values;
}

async function onNewChannel(event) {
  event.preventDefault();
  const form = event.target;
  const values = formValues(form);
  try {
    await call("POST", "/channels", { ...values, enabled: form.enabled.checked });
    form.reset();
    say("Channel created.", "info");
  } catch (error) {
    say(error.message);
  }
  await loadChannels();
}

async function onNewCampaign(event) {
  event.preventDefault();
  const form = event.target;
  const values = formValues(form);
  if (values.id === null) delete values.id;
  try {
    await call("POST", "/campaigns", values);
    form.reset();
    say("Campaign created.", "info");
  } catch (error) {
    say(error.message);
  }
  await loadCampaigns();
}

async function refresh() {
  try {
    if (!(await loadReadiness())) {
      setTimeout(refresh, 2000);
      return;
    }
    await loadCampaigns();
    await loadChannels();
  } catch (error) {
    say(error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  let typing;
  $("#search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => loadChannels().catch((e) => say(e.message)), 200);
  });
  $("#new-channel").addEventListener("submit", onNewChannel);
  $("#new-campaign").addEventListener("submit", onNewCampaign);
  refresh();
});
