// dom.js: the DOM helpers every page uses (the staff pages through staff.js, the
// victim's through link.js). Text only, never HTML.

export const $ = (id) => document.getElementById(id);

/** A new element with ``text`` as its text (never parsed as HTML) and a class. */
export function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text != null && text !== '') e.textContent = text;
  if (className) e.className = className;
  return e;
}
