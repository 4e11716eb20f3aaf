// Small DOM helpers. Data reaches the page only as text (textContent, attributes, Option),
// never as HTML.
"use strict";

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

// el("button", { class: "x", type: "button", onclick: fn }, "text", child, ...)
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let messageTimer;

// The page-wide message line: errors stay, information fades after a while.
export function say(text, kind = "error") {
  const box = $("#message");
  clearTimeout(messageTimer);
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
  if (text && kind === "info") messageTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

// --- errors next to the field the API names -----------------------------------------------------

const KIND_SEGMENTS = new Set(["imap", "pop3", "graph", "smtp"]);

// "body.inbound.imap.folders.0" -> candidates "inbound.folders.0", "inbound.folders", "inbound".
function fieldCandidates(field) {
  const parts = String(field || "")
    .split(".")
    .filter((part, index) => !(index === 0 && part === "body"))
    .filter((part, index) => !(index === 1 && KIND_SEGMENTS.has(part)));
  const candidates = [];
  for (let n = parts.length; n > 0; n -= 1) candidates.push(parts.slice(0, n).join("."));
  return candidates;
}

function controlFor(form, field) {
  for (const name of fieldCandidates(field)) {
    const control = [...form.elements].find((c) => c.name === name && !c.closest("[hidden]"));
    if (control) return control;
  }
  return null;
}

function errorBoxFor(control) {
  const id = `${control.id}-error`;
  let box = document.getElementById(id);
  if (!box) {
    box = el("p", { class: "field-error", id, hidden: true });
    const field = control.closest(".field");
    if (field) field.append(box);
    else control.after(box);
  }
  const described = new Set((control.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean));
  described.add(id);
  control.setAttribute("aria-describedby", [...described].join(" "));
  return box;
}

export function clearErrors(form, summary) {
  for (const control of form.elements) control.removeAttribute("aria-invalid");
  for (const box of $$(".field-error", form)) {
    box.textContent = "";
    box.hidden = true;
  }
  if (summary) {
    summary.textContent = "";
    summary.hidden = true;
  }
}

// Show each problem next to its field; what names no field of this form goes to the summary
// (or the page message). The first field in error gets the focus.
export function showErrors(form, error, summary) {
  clearErrors(form, summary);
  const unplaced = [];
  let first = null;
  for (const problem of error.problems || []) {
    const control = problem.field ? controlFor(form, problem.field) : null;
    if (!control) {
      unplaced.push(problem.field ? `${problem.field}: ${problem.message}` : problem.message);
      continue;
    }
    const box = errorBoxFor(control);
    box.textContent = box.textContent ? `${box.textContent} ${problem.message}` : problem.message;
    box.hidden = false;
    control.setAttribute("aria-invalid", "true");
    first ??= control;
  }
  if (!(error.problems || []).length) unplaced.push(error.message);
  if (unplaced.length) {
    if (summary) {
      summary.textContent = unplaced.join("\n");
      summary.hidden = false;
    } else {
      say(unplaced.join("\n"));
    }
  }
  (first ?? summary)?.focus?.();
}

// --- dialogs --------------------------------------------------------------------------------------

// Close buttons ([data-close]) and Escape close their dialog, once `mayClose` agrees; the
// dialog returns focus to the opener.
export function wireDialog(dialog, onClose = () => {}, mayClose = async () => true) {
  let opener = null;
  const tryClose = async () => {
    if (await mayClose()) dialog.close();
  };
  for (const button of $$("[data-close]", dialog)) button.addEventListener("click", tryClose);
  dialog.addEventListener("cancel", (event) => {
    event.preventDefault();
    tryClose();
  });
  dialog.addEventListener("close", () => {
    onClose();
    opener?.focus?.();
  });
  return {
    open() {
      opener = document.activeElement;
      dialog.showModal();
    },
  };
}

const confirmBox = () => $("#confirm-dialog");

// A confirmation in the page's own dialog (keyboard and screen-reader friendly): true on yes.
export function confirmAction(text, yesLabel = "Delete", title = "Are you sure?") {
  const dialog = confirmBox();
  $("#confirm-title", dialog).textContent = title;
  $("#confirm-text", dialog).textContent = text;
  $("#confirm-yes", dialog).textContent = yesLabel;
  const opener = document.activeElement;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        opener?.focus?.();
        resolve(dialog.returnValue === "yes");
      },
      { once: true },
    );
  });
}

export function formatTime(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}
