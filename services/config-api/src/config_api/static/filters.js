// The filters window of a channel: the ordered list (first match wins), add / edit / delete,
// move up / down, and "test a message" showing which filter would win.
"use strict";

import { seg } from "./api.js";
import { campaignName, fillCampaignSelect } from "./campaigns.js";
import { $, clearErrors, confirmAction, el, say, showErrors, wireDialog } from "./dom.js";

const KEYWORD_FIELDS = ["sender_keywords", "subject_keywords", "body_keywords", "all_of"];
const LABELS = { sender_keywords: "sender", subject_keywords: "subject", body_keywords: "body", all_of: "all of" };

let api;
let reloadList;
let dialogControl;
let channel = null;
let filters = [];
let revision = null;
let editing = null; // index of the filter in the form, -1 for a new one, null when closed
let changed = false;

const errorBox = () => $("#filters-error");

async function load() {
  const data = await api.get(`/channels/${seg(channel.id)}/filters`);
  filters = data.filters ?? data.items ?? [];
  revision = data.revision ?? null;
  render();
}

// Every change writes the whole ordered list with the revision it was based on, so two
// administrators editing at once get a clear conflict instead of losing a change.
// A filter as the API takes it back (responses add names the request does not accept).
const FILTER_FIELDS = ["id", "name", "campaign_id", ...["sender_keywords", "subject_keywords", "body_keywords", "all_of"], "regex", "header_conditions"];
const filterIn = (filter) => Object.fromEntries(FILTER_FIELDS.filter((key) => filter[key] !== undefined).map((key) => [key, filter[key]]));

async function store(next, focusAfter) {
  const summary = errorBox();
  clearErrors($("#filter-form"), summary);
  try {
    const data = await api.put(`/channels/${seg(channel.id)}/filters`, { filters: next.map(filterIn), revision });
    filters = data.filters ?? next;
    revision = data.revision ?? revision;
    changed = true;
    render();
    focusAfter?.();
    return true;
  } catch (error) {
    if (error.status === 409) {
      await load();
      summary.textContent = "Someone changed these filters meanwhile; the list now shows their version. Make your change again.";
      summary.hidden = false;
    } else if (editing !== null && !$("#filter-form").hidden) {
      showErrors($("#filter-form"), withoutListIndex(error), summary);
    } else {
      summary.textContent = error.message;
      summary.hidden = false;
    }
    return false;
  }
}

// "filters.2.regex" names the field of the filter being edited: show it next to "regex".
function withoutListIndex(error) {
  error.problems = error.problems.map((p) => ({ ...p, field: p.field.replace(/^(?:body\.)?filters\.\d+\./, "") }));
  return error;
}

function summary(filter) {
  const parts = [];
  for (const field of KEYWORD_FIELDS) {
    if (filter[field]?.length) parts.push(`${LABELS[field]}: ${filter[field].join(", ")}`);
  }
  if (filter.regex) parts.push(`regex: ${filter.regex}`);
  for (const condition of filter.header_conditions ?? []) parts.push(`${condition.header}: ${condition.keywords.join(", ")}`);
  return parts.join(" · ") || "matches nothing yet";
}

function render() {
  const list = $("#filter-list");
  list.replaceChildren(
    ...filters.map((filter, index) => {
      const label = filter.name || `Filter ${index + 1}`;
      const button = (text, aria, run, options = {}) =>
        el("button", { type: "button", "aria-label": aria, onclick: run, disabled: options.disabled, class: options.className, dataset: { action: text.toLowerCase() } }, text);
      return el(
        "li",
        { dataset: { id: filter.id ?? "" } },
        el(
          "div",
          { class: "filter-main" },
          el("strong", { class: "filter-name" }, label),
          el("span", { class: "filter-target" }, ` → ${campaignName(filter.campaign_id)}`),
          el("span", { class: "filter-criteria" }, summary(filter)),
        ),
        el(
          "div",
          { class: "filter-actions", "data-admin": true },
          button("Up", `Move ${label} up`, () => move(index, -1), { disabled: index === 0 }),
          button("Down", `Move ${label} down`, () => move(index, 1), { disabled: index === filters.length - 1 }),
          button("Edit", `Edit ${label}`, () => edit(index)),
          button("Delete", `Delete ${label}`, () => remove(index), { className: "danger" }),
        ),
      );
    }),
  );
  $("#filters-empty").hidden = filters.length > 0;
}

async function move(index, by) {
  const next = [...filters];
  const [filter] = next.splice(index, 1);
  next.splice(index + by, 0, filter);
  const label = filter.name || "filter";
  await store(next, () => {
    // Keep the focus on the same button of the moved filter, so it can be moved again.
    const item = $("#filter-list").children[index + by];
    const again = item?.querySelector(`[data-action=${by < 0 ? "up" : "down"}]`);
    (again && !again.disabled ? again : item?.querySelector("[data-action=edit]"))?.focus();
    say(`"${label}" moved to position ${index + by + 1}.`, "info");
  });
}

async function remove(index) {
  const filter = filters[index];
  if (!(await confirmAction(`Delete filter "${filter.name || `Filter ${index + 1}`}"?`))) return;
  await store(filters.filter((_, i) => i !== index), () => $("#add-filter").focus());
}

function edit(index) {
  const form = $("#filter-form");
  editing = index;
  const filter = index >= 0 ? filters[index] : {};
  form.reset();
  clearErrors(form, errorBox());
  fillCampaignSelect(form.elements.campaign_id, "Choose a campaign");
  form.elements.name.value = filter.name ?? "";
  form.elements.campaign_id.value = filter.campaign_id ?? "";
  for (const field of KEYWORD_FIELDS) form.elements[field].value = (filter[field] ?? []).join(", ");
  form.elements.regex.value = filter.regex ?? "";
  form.elements.header_conditions.value = (filter.header_conditions ?? []).map((c) => `${c.header}: ${c.keywords.join(", ")}`).join("\n");
  $("#filter-form-title").textContent = index >= 0 ? `Edit filter ${filter.name || index + 1}` : "New filter";
  form.hidden = false;
  form.elements.name.focus();
}

const keywords = (text) => text.split(",").map((k) => k.trim()).filter(Boolean);

// "Name: value" lines -> [name, value] pairs; a line without a colon is kept whole as the name,
// so the API names it as the field in error.
const headerLines = (text) =>
  text.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
    const colon = line.indexOf(":");
    return colon < 0 ? [line, ""] : [line.slice(0, colon).trim(), line.slice(colon + 1).trim()];
  });

async function submitFilter(event) {
  event.preventDefault();
  const form = event.target;
  const previous = editing >= 0 ? filters[editing] : {};
  const filter = {
    ...previous,
    name: form.elements.name.value.trim(),
    campaign_id: form.elements.campaign_id.value || null,
    regex: form.elements.regex.value.trim() || null,
  };
  for (const field of KEYWORD_FIELDS) filter[field] = keywords(form.elements[field].value);
  filter.header_conditions = headerLines(form.elements.header_conditions.value).map(([header, value]) => ({ header, keywords: keywords(value) }));
  const next = [...filters];
  if (editing >= 0) next[editing] = filter;
  else next.push(filter);
  const position = editing >= 0 ? editing : next.length - 1;
  const saved = await store(next, () => {
    form.hidden = true;
    editing = null;
    $("#filter-list").children[position]?.querySelector("[data-action=edit]")?.focus();
  });
  if (saved) say(`Filter "${filter.name || position + 1}" saved.`, "info");
}

function cancelFilter() {
  $("#filter-form").hidden = true;
  editing = null;
  $("#add-filter").focus();
}

// --- test a message -------------------------------------------------------------------------------

async function test(event) {
  event.preventDefault();
  const form = event.target;
  const output = $("#test-result");
  const headers = [
    ["From", form.elements.from.value.trim()],
    ["Subject", form.elements.subject.value],
    ...headerLines(form.elements.headers.value),
  ].filter(([, value]) => value !== "").map(([name, value]) => ({ name, value }));
  const message = { headers, body: form.elements.body.value };
  clearErrors(form);
  try {
    const result = await api.post(`/channels/${seg(channel.id)}/filters/test`, message);
    output.replaceChildren(describeDecision(result));
  } catch (error) {
    output.replaceChildren();
    showErrors(form, error, errorBox());
  }
}

// The API says which filter wins (or the default campaign) and why.
function describeDecision(result) {
  const campaign = result.campaign_name ?? (result.campaign_id ? campaignName(result.campaign_id) : null);
  let headline;
  if (result.reason === "filter") {
    const index = filters.findIndex((f) => f.id === result.filter_id);
    const position = index >= 0 ? ` (number ${index + 1})` : "";
    headline = `Filter "${result.filter_name || result.filter_id}"${position} wins → campaign ${campaign}.`;
  } else if (result.reason === "default") {
    headline = `No filter matches → default campaign ${campaign}.`;
  } else {
    headline = "No filter matches and the channel has no default campaign: the mail would not be routed.";
  }
  return el(
    "div",
    { class: `decision ${result.reason}` },
    el("p", { class: "decision-headline" }, headline),
    result.explanation ? el("p", { class: "hint" }, result.explanation) : null,
  );
}

// --- opening --------------------------------------------------------------------------------------

export async function openFilters(target) {
  channel = target;
  changed = false;
  editing = null;
  $("#filter-form").hidden = true;
  $("#test-result").replaceChildren();
  errorBox().hidden = true;
  $("#filters-title").textContent = `Filters of ${channel.name}`;
  $("#filters-intro").textContent = `Filters are tried in order; the first that matches wins. Mail matching none goes to ${
    channel.default_campaign_id ? `the default campaign, ${campaignName(channel.default_campaign_id)}` : "the default campaign (none chosen yet)"
  }.`;
  await load();
  dialogControl.open();
  $("#add-filter").focus();
}

export function setUpFilters(client, afterChange) {
  api = client;
  reloadList = afterChange;
  dialogControl = wireDialog($("#filters-dialog"), () => {
    if (changed) reloadList().catch((e) => say(e.message));
  });
  $("#add-filter").addEventListener("click", () => edit(-1));
  $("#cancel-filter").addEventListener("click", cancelFilter);
  $("#filter-form").addEventListener("submit", submitFilter);
  $("#test-form").addEventListener("submit", test);
}
