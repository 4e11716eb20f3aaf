// Campaigns: the list (also the choices of every campaign select), create, rename, delete.
"use strict";

import { seg } from "./api.js";
import { $, clearErrors, confirmAction, el, say, showErrors } from "./dom.js";

let api;
let campaigns = [];
const listeners = [];

export const allCampaigns = () => campaigns;
export const campaignName = (id) => campaigns.find((c) => c.id === id)?.name ?? id;

// Called after every change of the list (the channel list shows campaign names).
export function onCampaignsChanged(listener) {
  listeners.push(listener);
}

// Fill a <select> with the campaigns, keeping its value when it is still there.
export function fillCampaignSelect(select, emptyLabel) {
  const keep = select.value;
  select.replaceChildren();
  if (emptyLabel !== undefined) select.append(new Option(emptyLabel, ""));
  for (const campaign of campaigns) select.append(new Option(campaign.name, campaign.id));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

export async function loadCampaigns() {
  const data = await api.get("/campaigns");
  campaigns = data.items;
  render();
  for (const listener of listeners) listener();
}

function render() {
  const body = $("#campaign-rows");
  body.replaceChildren(...campaigns.map(row));
  $("#campaigns-empty").hidden = campaigns.length > 0;
}

function row(campaign) {
  const nameCell = el("td", { "data-label": "Name" }, campaign.name);
  const actions = el(
    "td",
    { class: "actions", "data-admin": true },
    el("button", { type: "button", "aria-label": `Rename campaign ${campaign.name}`, onclick: () => startRename(campaign, nameCell) }, "Rename"),
    " ",
    el("button", { type: "button", class: "danger", "aria-label": `Delete campaign ${campaign.name}`, onclick: () => remove(campaign) }, "Delete"),
  );
  return el("tr", { dataset: { id: campaign.id } }, nameCell, el("td", { "data-label": "Id" }, el("code", {}, campaign.id)), actions);
}

function startRename(campaign, cell) {
  const inputId = `rename-${campaign.id}`;
  const input = el("input", { id: inputId, name: "name", value: campaign.name, maxlength: 200, required: true });
  const form = el(
    "form",
    { class: "rename-form", novalidate: true },
    el("label", { for: inputId, class: "visually-hidden" }, `New name of ${campaign.name}`),
    input,
    el("button", { type: "submit", class: "primary" }, "Save"),
    el("button", { type: "button", onclick: () => render() }, "Cancel"),
  );
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      render();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api.put(`/campaigns/${seg(campaign.id)}`, { name: input.value });
      say(`Campaign renamed to "${input.value.trim()}".`, "info");
      await loadCampaigns();
    } catch (error) {
      showErrors(form, error);
    }
  });
  cell.replaceChildren(form);
  input.focus();
  input.select();
}

async function remove(campaign) {
  if (!(await confirmAction(`Delete campaign "${campaign.name}"? This cannot be undone.`))) return;
  try {
    await api.delete(`/campaigns/${seg(campaign.id)}`);
    say(`Campaign "${campaign.name}" deleted.`, "info");
  } catch (error) {
    say(refusalText(campaign, error));
  }
  await loadCampaigns();
}

// A campaign in use is refused (409) with the channels that use it: name them.
function refusalText(campaign, error) {
  const channels = error.body?.channels ?? [];
  if (error.status === 409 && channels.length) {
    const names = channels.map((c) => c.name ?? c.id).join(", ");
    return `Campaign "${campaign.name}" cannot be deleted: it is still used by ${names}. Choose another default campaign or filter target for them first.`;
  }
  return error.message;
}

async function create(event) {
  event.preventDefault();
  const form = event.target;
  const name = form.elements.name.value;
  const id = form.elements.id.value.trim();
  clearErrors(form);
  try {
    await api.post("/campaigns", id ? { name, id } : { name });
    form.reset();
    say(`Campaign "${name.trim()}" created.`, "info");
    await loadCampaigns();
  } catch (error) {
    showErrors(form, error);
  }
}

export function setUpCampaigns(client) {
  api = client;
  $("#new-campaign").addEventListener("submit", create);
}
