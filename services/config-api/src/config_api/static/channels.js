// The channel list: quick and advanced search, paging, selection with bulk actions, and a
// row menu (Edit, Filters, Delete).
"use strict";

import { seg } from "./api.js";
import { campaignName, fillCampaignSelect } from "./campaigns.js";
import { $, $$, confirmAction, el, formatTime, say } from "./dom.js";

let api;
let actions; // { edit(channel), filters(channel) }
const state = { page: 0, size: 25, total: 0, items: [], selected: new Map() };
let loading = 0;

const DIRECTION_LABEL = { inbound: "receiving", outbound: "sending" };

// The search as the API's query parameters: the quick search box plus the advanced fields.
function query() {
  const form = $("#search-form");
  const params = new URLSearchParams();
  const q = form.elements.q.value.trim();
  if (q) params.set("q", q);
  for (const name of ["name", "email_address", "default_campaign_id"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  const status = form.elements.status.value;
  if (status && status !== "all") params.set("status", status);
  params.set("limit", String(state.size));
  params.set("offset", String(state.page * state.size));
  return params;
}

export async function loadChannels() {
  const mine = ++loading;
  const data = await api.get(`/channels?${query()}`);
  if (mine !== loading) return; // a newer search answered first
  // The API pages (limit/offset) and counts every match (total).
  const items = data.items;
  state.total = data.total;
  if (items.length === 0 && state.page > 0 && state.total > 0) {
    state.page = Math.max(0, Math.ceil(state.total / state.size) - 1);
    await loadChannels();
    return;
  }
  state.items = items;
  render();
}

function render() {
  const body = $("#channel-rows");
  // Re-rendering replaces the rows: keep the keyboard focus on the same control of the same row.
  const focused = document.activeElement;
  const focusedRow = body.contains(focused) ? focused.closest("tr")?.dataset.id : undefined;
  const focusedClass = focused?.className;
  body.replaceChildren(...state.items.map(row));
  if (focusedRow !== undefined && focusedClass) {
    // The same control of the same row, or (the row was deleted) of the first row left.
    const rows = [...body.rows];
    const target = rows.find((r) => r.dataset.id === focusedRow) ?? rows[0];
    const again = target?.getElementsByClassName(focusedClass.split(" ")[0])[0];
    (again ?? $("#quick-search")).focus();
  }
  $("#channels-empty").hidden = state.items.length > 0;
  const pages = Math.max(1, Math.ceil(state.total / state.size));
  const first = state.total === 0 ? 0 : state.page * state.size + 1;
  const last = state.page * state.size + state.items.length;
  $("#page-info").textContent = `${first}-${last} of ${state.total} · page ${state.page + 1} of ${pages}`;
  $("#prev-page").disabled = state.page === 0;
  $("#next-page").disabled = state.page + 1 >= pages;
  renderSelection();
}

function statusCell(channel) {
  const status = channel.status || { state: "inactive" };
  const active = status.state === "active";
  const details = [];
  if (!active) {
    details.push(el("span", { class: "reason" }, status.reason || (channel.enabled ? "not validated yet" : "disabled")));
    if (status.step) {
      const where = status.direction ? ` (${DIRECTION_LABEL[status.direction] ?? status.direction})` : "";
      details.push(el("span", { class: "step" }, `failing step: ${status.step}${where}`));
    }
  }
  if (status.at) details.push(el("span", { class: "at" }, `since ${formatTime(status.at)}`));
  return el(
    "td",
    { "data-label": "Status", class: "status" },
    el("span", { class: `badge ${active ? "active" : "inactive"}` }, active ? "Active" : "Inactive"),
    ...details,
  );
}

function row(channel) {
  const checkbox = el("input", {
    type: "checkbox",
    class: "select-row",
    "aria-label": `Select ${channel.name}`,
    checked: state.selected.has(channel.id),
    onchange: (event) => {
      if (event.target.checked) state.selected.set(channel.id, channel);
      else state.selected.delete(channel.id);
      renderSelection();
    },
  });
  const name = el(
    "td",
    { "data-label": "Name", class: "name" },
    el("span", { class: "channel-name" }, channel.name),
    channel.email_address ? el("span", { class: "email" }, channel.email_address) : null,
  );
  return el(
    "tr",
    { dataset: { id: channel.id } },
    el("td", { class: "select", "data-admin": true }, checkbox),
    name,
    el("td", { "data-label": "Filters", class: "number" }, String(channel.filter_count ?? 0)),
    statusCell(channel),
    el("td", { "data-label": "Default campaign" }, channel.default_campaign_id ? channel.default_campaign_name || campaignName(channel.default_campaign_id) : "—"),
    el("td", { "data-label": "Enabled" }, channel.enabled ? "Yes" : "No"),
    el("td", { class: "actions" }, rowMenu(channel)),
  );
}

// --- the row menu: a button that opens a small menu, keyboard operable ---------------------------

function rowMenu(channel) {
  const menuId = `menu-${channel.id}`;
  const toggle = el("button", {
    type: "button",
    class: "menu-button",
    "aria-haspopup": "menu",
    "aria-expanded": "false",
    "aria-controls": menuId,
    "aria-label": `Options for ${channel.name}`,
  }, "⋯");
  const item = (label, run, className, adminOnly = false) =>
    el("li", { role: "none", "data-admin": adminOnly }, el("button", { type: "button", role: "menuitem", class: className, tabindex: "-1", onclick: () => { close(true); run(); } }, label));
  const menu = el(
    "ul",
    { id: menuId, role: "menu", class: "menu", hidden: true, "aria-label": `Options for ${channel.name}` },
    item("Edit", () => actions.edit(channel), undefined, true),
    item("Filters", () => actions.filters(channel)),
    item("Delete", () => removeOne(channel), "danger", true),
  );
  const items = () => $$("[role=menuitem]", menu).filter((b) => b.offsetParent !== null);
  function close(focusToggle = false) {
    menu.hidden = true;
    toggle.setAttribute("aria-expanded", "false");
    document.removeEventListener("click", outside, true);
    if (focusToggle) toggle.focus();
  }
  function outside(event) {
    if (!menu.contains(event.target) && event.target !== toggle) close();
  }
  function open() {
    for (const other of $$(".menu:not([hidden])")) other.dispatchEvent(new Event("close-menu"));
    menu.hidden = false;
    toggle.setAttribute("aria-expanded", "true");
    items()[0].focus();
    document.addEventListener("click", outside, true);
  }
  menu.addEventListener("close-menu", () => close());
  toggle.addEventListener("click", () => (menu.hidden ? open() : close()));
  toggle.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") {
      event.preventDefault();
      open();
    }
  });
  menu.addEventListener("keydown", (event) => {
    const list = items();
    const at = list.indexOf(document.activeElement);
    if (event.key === "ArrowDown") list[(at + 1) % list.length].focus();
    else if (event.key === "ArrowUp") list[(at - 1 + list.length) % list.length].focus();
    else if (event.key === "Home") list[0].focus();
    else if (event.key === "End") list[list.length - 1].focus();
    else if (event.key === "Escape" || event.key === "Tab") close(event.key === "Escape");
    else return;
    if (event.key !== "Tab") event.preventDefault();
  });
  return el("div", { class: "menu-wrap" }, toggle, menu);
}

async function removeOne(channel) {
  if (!(await confirmAction(`Delete channel "${channel.name}" and its filters permanently? This cannot be undone.`))) return;
  try {
    await api.delete(`/channels/${seg(channel.id)}?revision=${channel.revision}`);
    state.selected.delete(channel.id);
    say(`Channel "${channel.name}" deleted.`, "info");
  } catch (error) {
    say(error.message);
  }
  await loadChannels();
}

// --- selection and bulk actions ------------------------------------------------------------------

function renderSelection() {
  const count = state.selected.size;
  $("#selected-count").textContent = `${count} selected`;
  for (const button of $$("[data-bulk]")) button.disabled = count === 0;
  const boxes = $$("#channel-rows .select-row");
  const all = $("#select-all");
  const checked = boxes.filter((b) => b.checked).length;
  all.checked = boxes.length > 0 && checked === boxes.length;
  all.indeterminate = checked > 0 && checked < boxes.length;
}

function selectAll(event) {
  for (const channel of state.items) {
    if (event.target.checked) state.selected.set(channel.id, channel);
    else state.selected.delete(channel.id);
  }
  render();
}

const BULK_WORDS = { enable: "enabled", disable: "disabled", delete: "deleted" };

async function bulk(action) {
  const chosen = [...state.selected.values()];
  if (chosen.length === 0) return;
  if (action === "delete") {
    const names = chosen.map((c) => c.name).join(", ");
    if (!(await confirmAction(`Delete ${chosen.length} channel(s) and their filters permanently: ${names}? This cannot be undone.`))) return;
  }
  try {
    const result = await api.post("/channels/bulk", { action, ids: chosen.map((c) => c.id) });
    const failed = result.items.filter((item) => !item.ok);
    if (failed.length) {
      const name = (id) => state.selected.get(id)?.name ?? id;
      say(`${result.succeeded} ${BULK_WORDS[action]}; not done: ${failed.map((item) => `${name(item.id)}: ${item.detail ?? `HTTP ${item.status}`}`).join("; ")}`);
    } else {
      say(`${chosen.length} channel(s) ${BULK_WORDS[action]}.`, "info");
    }
    state.selected.clear();
  } catch (error) {
    say(error.message);
  }
  await loadChannels();
}

export function setUpChannels(client, rowActions) {
  api = client;
  actions = rowActions;
  const form = $("#search-form");
  const reload = () => {
    state.page = 0;
    loadChannels().catch((e) => say(e.message));
  };
  let typing;
  $("#quick-search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(reload, 250);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    reload();
  });
  form.addEventListener("reset", () => setTimeout(reload));
  $("#select-all").addEventListener("change", selectAll);
  for (const button of $$("[data-bulk]")) button.addEventListener("click", () => bulk(button.dataset.bulk));
  $("#prev-page").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    loadChannels().catch((e) => say(e.message));
  });
  $("#next-page").addEventListener("click", () => {
    state.page += 1;
    loadChannels().catch((e) => say(e.message));
  });
  $("#page-size").addEventListener("change", (event) => {
    state.size = Number(event.target.value);
    reload();
  });
}

export function refreshCampaignChoices() {
  fillCampaignSelect($("#search-campaign"), "Any");
}
