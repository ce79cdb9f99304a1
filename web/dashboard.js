// dashboard.js: the performance dashboard, served at /dashboard (sergeants, admin).
// The charts are drawn on the server (GET /api/kpis/charts/{name}.svg): each is
// fetched, parsed as SVG and imported into the page, so its bars, points, <title>
// and <desc> (the text alternative) are in the page itself. Beside each chart: its
// text alternative in words, a table of the same figures (from GET /api/kpis and
// /api/kpis/response_times), and downloads as CSV and SVG. The filters live in the
// address (?from=&to=&group_by=&grade=&category=), so a view can be shared. Every
// value goes in as text, never as HTML.
import { $, api, el, errorText, roleHome } from '/static/staff.js';

const FILTERS = ['from', 'to', 'group_by', 'grade', 'category'];
const CHARTS = [
  { name: 'response_times', title: 'Response time distribution', csv: 'table' },
  { name: 'volumes', title: 'Incidents to EVR and rejected', csv: 'series' },
  { name: 'median_response', title: 'Median response time', csv: 'series' },
  { name: 'rates', title: 'Reviews within 24 hours and crime outcomes', csv: 'table' },
  { name: 'satisfaction', title: 'Victim satisfaction over time', csv: 'series' },
];

let loading = 0;     // the latest load: an older one that ends late is dropped
let blobUrls = [];   // the CSVs made here, released on the next load

roleHome({
  roles: ['sergeant', 'admin'],
  refused: 'The dashboard is for sergeants and admin staff. Your role may not use it.',
  onSignedIn() {
    fillForm(new URLSearchParams(location.search));
    load();
  },
  onSignedOut() {
    loading += 1;
    $('charts').replaceChildren();
    $('headline').replaceChildren();
    $('trial-table').replaceChildren();
    $('trial').hidden = true;
    $('scope').textContent = '';
    $('dash-status').textContent = '';
  },
});

$('filters').addEventListener('submit', (event) => {
  event.preventDefault();
  const query = currentQuery();
  history.replaceState(null, '', `/dashboard${query ? `?${query}` : ''}`);
  load();
});

// ---- the filters -------------------------------------------------------------

function isoDay(d) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

function fillForm(params) {
  const today = new Date();
  const monthAgo = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 29);
  $('f-from').value = params.get('from') || isoDay(monthAgo);
  $('f-to').value = params.get('to') || isoDay(today);
  $('f-group').value = params.get('group_by') === 'week' ? 'week' : 'day';
  $('f-grade').value = /^[1-5]$/.test(params.get('grade') || '') ? params.get('grade') : '';
  $('f-category').value = params.get('category') || '';
}

function currentQuery() {
  const form = new FormData($('filters'));
  const params = new URLSearchParams();
  for (const key of FILTERS) {
    const value = String(form.get(key) || '').trim();
    if (value) params.set(key, value);
  }
  return params.toString();
}

// ---- words -------------------------------------------------------------------

const pct = (v) => (v == null ? 'no data' : `${v} %`);

function minutes(m) {
  if (m == null) return 'none';
  if (m < 90) return `${Math.round(m)} min`;
  if (m < 48 * 60) return `${(m / 60).toFixed(1)} h`;
  return `${(m / 1440).toFixed(1)} days`;
}

function dayText(start, groupBy) {
  const text = new Date(`${start}T00:00:00Z`).toLocaleDateString('en-GB',
    { day: 'numeric', month: 'short', year: 'numeric', timeZone: 'UTC' });
  return groupBy === 'week' ? `Week from ${text}` : text;
}

function binText(lower, upper) {
  const unit = (m) => (m < 60 ? [m, 'min'] : m < 1440 ? [m / 60, 'h'] : [m / 1440, 'd']);
  const [low, lowUnit] = unit(lower);
  if (upper == null) return `${low} ${lowUnit} or more`;
  const [high, highUnit] = unit(upper);
  return lower && lowUnit !== highUnit ? `${low} ${lowUnit}–${high} ${highUnit}` : `${low}–${high} ${highUnit}`;
}

function headline(k) {
  const r = k.response_minutes;
  const items = [
    `Incidents reported: ${k.incidents.created} (${k.incidents.to_evr} to EVR, ${k.incidents.rejected} rejected)`,
    r.n ? `Median response ${minutes(r.p50)}; ${r.within_target_pct == null ? 'no grade target applies'
      : `${r.within_target_pct} % within target`}` : 'No response times in this period',
    k.reviews.n ? `Reviews within 24 h: ${pct(k.reviews.within_24h_pct)} (of ${k.reviews.n})` : 'No reviews in this period',
    k.crime_outcomes.n ? `Positive outcomes: ${pct(k.crime_outcomes.positive_pct)} (of ${k.crime_outcomes.n} with an outcome)`
      : 'No crime outcomes in this period',
    k.satisfaction.responses ? `Victims satisfied: ${pct(k.satisfaction.satisfied_pct)}` : 'Satisfaction: No survey answers yet',
    `Officers active: ${k.officers_active}`,
  ];
  $('headline').replaceChildren(...items.map((text) => el('li', text)));
}

// ---- the tables --------------------------------------------------------------

/** {head: [...], rows: [[...]]} of each chart, from the JSON figures. */
function tableOf(name, k, bins) {
  const by = k.group_by === 'week' ? 'Week' : 'Day';
  switch (name) {
    case 'response_times':
      return {
        head: ['Response time', 'Within target', 'Past target', 'No target', 'All'],
        rows: bins.map((b) => [binText(b.from_minutes, b.to_minutes), b.within_target, b.past_target, b.no_target,
          b.incidents]),
      };
    case 'volumes':
      return {
        head: [by, 'Reported', 'To EVR', 'Rejected'],
        rows: k.series.map((s) => [dayText(s.start, k.group_by), s.incidents, s.to_evr, s.rejected]),
      };
    case 'median_response':
      return {
        head: [by, 'Median response (minutes)'],
        rows: k.series.map((s) => [dayText(s.start, k.group_by), s.response_p50_minutes ?? '–']),
      };
    case 'rates':
      return {
        head: ['Measure', 'Share (%)', 'Of'],
        rows: [
          ['Reviews within 24 h', k.reviews.within_24h_pct ?? '–', `${k.reviews.n} reviews`],
          ['Positive outcomes (1-8)', k.crime_outcomes.positive_pct ?? '–', `${k.crime_outcomes.n} outcomes`],
          ['Outcome 14 (victim declines)', k.crime_outcomes.outcome_14_pct ?? '–', `${k.crime_outcomes.n} outcomes`],
          ['Outcome 16 (victim withdraws)', k.crime_outcomes.outcome_16_pct ?? '–', `${k.crime_outcomes.n} outcomes`],
        ],
      };
    default:
      return {
        head: [by, 'Satisfied (%)'],
        rows: k.satisfaction.responses ? k.series.map((s) => [dayText(s.start, k.group_by), s.satisfied_pct ?? '–'])
          : [['No survey answers yet', '–']],
      };
  }
}

function table(caption, data) {
  const t = el('table');
  t.append(el('caption', caption));
  const headRow = el('tr');
  for (const h of data.head) {
    const th = el('th', h);
    th.scope = 'col';
    headRow.append(th);
  }
  t.append(el('thead'));
  t.tHead.append(headRow);
  const body = el('tbody');
  for (const cells of data.rows) {
    const tr = el('tr');
    cells.forEach((value, i) => {
      const cell = el(i === 0 ? 'th' : 'td', String(value), i === 0 ? '' : 'num');
      if (i === 0) cell.scope = 'row';
      tr.append(cell);
    });
    body.append(tr);
  }
  t.append(body);
  return t;
}

function csvOf(data) {
  const quote = (v) => {
    const s = String(v);
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [data.head, ...data.rows].map((r) => r.map(quote).join(',')).join('\r\n') + '\r\n';
}

// ---- the charts --------------------------------------------------------------

async function svgOf(url) {
  let r;
  try {
    r = await fetch(url, { credentials: 'same-origin' });
  } catch {
    return { error: 'The chart could not be loaded (network error).' };
  }
  if (!r.ok) return { error: `The chart could not be loaded (${r.status}).` };
  const doc = new DOMParser().parseFromString(await r.text(), 'image/svg+xml');
  if (doc.documentElement.nodeName !== 'svg') return { error: 'The chart could not be read.' };
  return { svg: document.importNode(doc.documentElement, true) };
}

function link(text, title, href, filename) {
  const a = el('a', text);
  a.append(el('span', ` (${title})`, 'visually-hidden'));
  a.href = href;
  a.download = filename;
  return a;
}

function figure(chart, got, data, query, names) {
  const f = el('figure');
  f.id = `fig-${chart.name}`;
  const caption = el('figcaption');
  caption.append(el('h2', chart.title));
  const alt = got.svg?.querySelector('desc')?.textContent || got.error || '';
  caption.append(el('p', alt, got.error ? 'error chart-alt' : 'hint chart-alt'));
  const box = el('div', null, 'chart-box');
  if (got.svg) box.append(got.svg);

  const tableWrap = el('div', null, 'table-wrap chart-table');
  tableWrap.id = `table-${chart.name}`;
  tableWrap.hidden = true;
  tableWrap.append(table(`${chart.title}: the figures`, data));
  const toggle = el('button', 'Show as table');
  toggle.type = 'button';
  toggle.className = 'table-toggle';
  toggle.setAttribute('aria-expanded', 'false');
  toggle.setAttribute('aria-controls', tableWrap.id);
  toggle.addEventListener('click', () => {
    tableWrap.hidden = !tableWrap.hidden;
    toggle.setAttribute('aria-expanded', String(!tableWrap.hidden));
    toggle.textContent = tableWrap.hidden ? 'Show as table' : 'Hide the table';
  });

  let csvHref = `/api/kpis.csv${query ? `?${query}` : ''}`;
  if (chart.csv === 'table') {
    csvHref = URL.createObjectURL(new Blob([csvOf(data)], { type: 'text/csv' }));
    blobUrls.push(csvHref);
  }
  const actions = el('div', null, 'chart-actions');
  actions.append(toggle,
    link('Download as CSV', chart.title, csvHref, `evr-${chart.name}-${names}.csv`),
    link('Download as SVG', chart.title, chartUrl(chart.name, query), `evr-${chart.name}-${names}.svg`));
  f.append(caption, box, actions, tableWrap);
  return f;
}

// ---- the trial's arms ---------------------------------------------------------

/** "30 min (10 to 60)": a figure with its 95 % interval, in words. */
function withInterval(value, ci, unit) {
  if (value == null) return 'not enough data';
  const shown = unit === 'min' ? minutes(value) : `${value} %`;
  if (!ci) return shown;
  const [low, high] = ci;
  return unit === 'min' ? `${shown} (${minutes(low)} to ${minutes(high)})` : `${shown} (${low} to ${high} %)`;
}

function difference(d, unit) {
  if (!d) return 'not enough data';
  const say = (v) => `${v > 0 ? '+' : v < 0 ? '-' : ''}${unit === 'min' ? minutes(Math.abs(v)) : `${Math.abs(v)} points`}`;
  return d.ci ? `${say(d.difference)} (${say(d.ci[0])} to ${say(d.ci[1])})` : say(d.difference);
}

const TRIAL_ROWS = [
  ['Median wait for the officer', 'response_minutes', 'p50', 'min'],
  ['Within the grade\'s target', 'response_minutes', 'within_target_pct', '%'],
  ['Reviews within 24 h', 'reviews', 'within_24h_pct', '%'],
  ['Positive crime outcomes', 'crime_outcomes', 'positive_pct', '%'],
  ['Victim withdrew (outcome 16)', 'crime_outcomes', 'outcome_16_pct', '%'],
  ['Victims satisfied', 'satisfaction', 'satisfied_pct', '%'],
];

/** The arms side by side, when the period has incidents of a trial's control arm. */
function trial(got) {
  const control = got?.by_arm?.control;
  $('trial').hidden = !control || !control.incidents.created;
  if ($('trial').hidden) return void $('trial-table').replaceChildren();
  const { treatment } = got.by_arm;
  const data = {
    head: ['Figure', 'Treatment', 'Control', 'Difference'],
    rows: [['Incidents', String(treatment.incidents.created), String(control.incidents.created), '–'],
      ...TRIAL_ROWS.map(([words, group, name, unit]) => [words,
        withInterval(treatment[group][name], treatment[group][`${name}_ci`], unit),
        withInterval(control[group][name], control[group][`${name}_ci`], unit),
        difference(got.difference[group]?.[name], unit)])],
  };
  $('trial-table').replaceChildren(table('The trial\'s arms compared', data));
}

const chartUrl = (name, query) => `/api/kpis/charts/${name}.svg${query ? `?${query}` : ''}`;

async function load() {
  const mine = ++loading;
  const query = currentQuery();
  $('filters-error').textContent = '';
  $('dash-status').textContent = 'Loading the figures…';
  document.body.dataset.loaded = '';
  const suffix = query ? `?${query}` : '';
  const [kpis, times, arms, ...svgs] = await Promise.all([
    api('GET', `/api/kpis${suffix}`),
    api('GET', `/api/kpis/response_times${suffix}`),
    api('GET', `/api/kpis${suffix ? `${suffix}&` : '?'}by_arm=1`),
    ...CHARTS.map((c) => svgOf(chartUrl(c.name, query))),
  ]);
  if (mine !== loading) return;
  if (!kpis.ok || !times.ok) {
    const bad = kpis.ok ? times : kpis;
    $('filters-error').textContent = errorText(bad, 'The figures could not be loaded');
    $('dash-status').textContent = '';
    return;
  }
  const k = kpis.data;
  for (const url of blobUrls) URL.revokeObjectURL(url);
  blobUrls = [];
  headline(k);
  trial(arms.ok ? arms.data : null);
  const from = $('f-from').value || 'start';
  const to = $('f-to').value || 'today';
  $('scope').textContent = `Incidents reported from ${from} to ${to}`
    + `${k.grade ? `, grade ${k.grade}` : ''}${k.category ? `, category ${k.category}` : ''}, by ${k.group_by}.`;
  $('charts').replaceChildren(...CHARTS.map((chart, i) => figure(
    chart, svgs[i], tableOf(chart.name, k, times.data.bins), query, `${from}-to-${to}`)));
  $('dash-status').textContent = 'The figures are up to date.';
  document.body.dataset.loaded = query || 'default';
}
