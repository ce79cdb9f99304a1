// location.js: the victim's location, with consent. On the victim's page: why it
// helps, one button, one reading of navigator.geolocation (never watched), and what
// was shared; declining is fine and said so. On the console: latitude, longitude,
// accuracy and time, and a link that opens OpenStreetMap in a new tab (nothing is
// embedded or fetched by the page).
import { el } from '/static/dom.js';
import { clock } from '/static/people.js';

const MAX_ACCURACY_M = 100000; // the server's bound

/** The OpenStreetMap page for a point (opened by the officer, never fetched here). */
export function mapURL(lat, lon) {
  const a = Number(lat).toFixed(6);
  const o = Number(lon).toFixed(6);
  return `https://www.openstreetmap.org/?mlat=${a}&mlon=${o}#map=17/${a}/${o}`;
}

const metres = (m) => `about ${Math.round(Number(m))} metres`;

/** The facts of a location as a list: latitude, longitude, accuracy, time. */
function facts(loc) {
  const dl = el('dl', null, 'facts location-facts');
  for (const [term, value] of [
    ['Latitude', Number(loc.lat).toFixed(5)],
    ['Longitude', Number(loc.lon).toFixed(5)],
    ['Accuracy', metres(loc.accuracy_m)],
    ['Shared at', clock(loc.at) || '–'],
  ]) dl.append(el('dt', term), el('dd', value));
  return dl;
}

/**
 * The victim's offer to share their location, built in ``root``.
 * ``send(loc)`` hands {lat, lon, accuracy_m} to the call (false when not connected).
 * Returns {refused(message)} for the server's error (bad_location, not_allowed).
 */
export function offerLocation(root, send) {
  const heading = el('h2', 'Your location');
  heading.id = 'location-h';
  root.setAttribute('aria-labelledby', heading.id);
  const why = el('p', 'You can share where you are now, so the officer can send help to the right place if needed. '
    + 'It is shared once, when you tap the button, and is not followed after that. Your phone will ask you first: '
    + 'you can say no.');
  const button = el('button', 'Share my location');
  button.type = 'button';
  const status = el('p', null, 'note');
  status.setAttribute('role', 'status');
  const shared = el('div');
  root.replaceChildren(heading, why, button, status, shared);
  const say = (text) => { status.textContent = text; };

  button.addEventListener('click', () => {
    if (!navigator.geolocation) return say('This browser cannot find your location. You can tell the officer where you are instead.');
    button.disabled = true;
    say('Finding your location…');
    navigator.geolocation.getCurrentPosition((pos) => {
      button.disabled = false;
      const loc = {
        lat: Math.round(pos.coords.latitude * 1e6) / 1e6,
        lon: Math.round(pos.coords.longitude * 1e6) / 1e6,
        accuracy_m: Math.min(MAX_ACCURACY_M, Math.round((pos.coords.accuracy || 0) * 10) / 10),
      };
      if (!send(loc)) return say('Not shared: the call is not connected. Try again when it reconnects.');
      say('Your location was shared with the officer.');
      shared.replaceChildren(el('h3', 'What you shared'), facts({ ...loc, at: new Date().toISOString() }));
      button.textContent = 'Share my location again';
      return undefined;
    }, (err) => {
      button.disabled = false;
      say(err.code === 1
        ? 'You did not share your location. That is fine: you can tell the officer where you are instead.'
        : 'Your location could not be found. You can try again, or tell the officer where you are.');
    }, { enableHighAccuracy: true, timeout: 20000, maximumAge: 0 });
  });
  return { refused: (message) => { shared.replaceChildren(); say(`Not shared: ${message}`); } };
}

/** The victim's last shared location on the console (state.location), or nothing. */
export function showLocation(root, loc) {
  root.hidden = !loc;
  if (!loc) return;
  const heading = el('h2', 'Victim\'s location');
  heading.id = 'location-h';
  root.setAttribute('aria-labelledby', heading.id);
  const link = el('a', 'Open in a map (OpenStreetMap, new tab)');
  link.href = mapURL(loc.lat, loc.lon);
  link.target = '_blank';
  link.rel = 'noopener noreferrer';
  root.replaceChildren(heading, facts(loc), el('p', null, 'location-map'));
  root.querySelector('.location-map').append(link);
}
