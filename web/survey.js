// survey.js: the victim's survey (/s/{token}): four questions, one per screen, each
// skippable; the answers are sent once, at the end (POST /s/{token}). Text only,
// never HTML.
import { $, el } from '/static/dom.js';

const SCALES = {
  satisfied: ['Very dissatisfied', 'Dissatisfied', 'Neither', 'Satisfied', 'Very satisfied'],
  felt_safe: ['Not at all safe', 'Not very safe', 'Neither', 'Fairly safe', 'Very safe'],
  confidence_in_police: ['None at all', 'Not much', 'Some', 'Quite a lot', 'A great deal'],
};

const questions = [...document.querySelectorAll('.question')];
const answers = {};
let current = 0;

// Each question's choices: radio buttons with their words (a scale of 1 to 5, or yes and no).
for (const q of questions) {
  const name = q.dataset.name;
  const choices = q.dataset.kind === 'yesno'
    ? [['true', 'Yes'], ['false', 'No']]
    : SCALES[name].map((text, i) => [String(i + 1), text]);
  for (const [value, text] of choices) {
    const id = `${name}-${value}`;
    const input = el('input');
    input.type = 'radio';
    input.name = name;
    input.value = value;
    input.id = id;
    const label = el('label', null, 'choice');
    label.htmlFor = id;
    label.append(input, ` ${text}`);
    q.append(label);
  }
}

function show(index) {
  current = index;
  questions.forEach((q, i) => { q.hidden = i !== index; });
  $('progress').textContent = `Question ${index + 1} of ${questions.length}`;
  $('back').hidden = index === 0;
  $('next').textContent = index === questions.length - 1 ? 'Send' : 'Next';
  $('error').textContent = '';
  questions[index].querySelector('h1').focus();
}

function read(q) {
  const chosen = q.querySelector('input:checked');
  if (!chosen) { delete answers[q.dataset.name]; return; }
  answers[q.dataset.name] = q.dataset.kind === 'yesno' ? chosen.value === 'true' : Number(chosen.value);
}

async function send() {
  if (!Object.keys(answers).length) {
    $('done-text').textContent = 'You skipped every question, so nothing was sent. That is fine.';
    return finish();
  }
  $('next').disabled = true;
  let r;
  try {
    r = await fetch(location.pathname, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ answers }),
    });
  } catch {
    r = null;
  }
  $('next').disabled = false;
  if (r && (r.status === 201 || r.status === 410)) return finish();
  $('error').textContent = 'Your answers could not be sent. Check your connection and try again.';
}

function finish() {
  $('survey').hidden = true;
  $('q-done').hidden = false;
  $('done-h').focus();
}

$('start').addEventListener('click', () => {
  $('q-intro').hidden = true;
  $('survey').hidden = false;
  show(0);
});
$('back').addEventListener('click', () => show(Math.max(0, current - 1)));
$('skip').addEventListener('click', () => {
  const q = questions[current];
  for (const input of q.querySelectorAll('input')) input.checked = false;
  read(q);
  if (current < questions.length - 1) show(current + 1); else send();
});
$('survey').addEventListener('submit', (e) => {
  e.preventDefault();
  read(questions[current]);
  if (current < questions.length - 1) show(current + 1); else send();
});
