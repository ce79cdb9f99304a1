// gallery.js: the videos of a call, one tile per person (their picture and sound,
// with their name and role) and a tile of its own for a shared screen, laid out for
// 2 to 6 people: one big picture with a small self view in a 1:1 call; stacked or in
// two columns on a phone, a grid on a desktop (style.css, .gallery). The person on
// the connection's first transceivers keeps the page's own #remote element (the
// 1:1 picture), so it never restarts when others join. Tiles come and go with the
// call's 'participants' events (call.js).
import { el } from '/static/dom.js';
import { who } from '/static/people.js';

export class Gallery {
  /**
   * @param {HTMLElement} stage   the .gallery element
   * @param {HTMLElement} main    the tile holding #remote (call.remote)
   * @param {HTMLElement} before  new tiles go before this element (the stage's message)
   */
  constructor(stage, main, before) {
    this.stage = stage;
    this.main = main;
    this.before = before;
    this.tiles = new Map(); // key -> figure
    this.people = [];
  }

  /** Show these people (call.js's 'participants' detail). */
  render(people) {
    this.people = people;
    const keep = new Set();
    let persons = 0;
    const primary = people.find((p) => p.primary);
    for (const p of people) {
      if (!p.primary && p.media.getTracks().length) {
        keep.add(`p:${p.id}`);
        this.tile(`p:${p.id}`, p.media, who(p), 'tile-person');
        persons += 1;
      }
      if (p.screen) {
        keep.add(`s:${p.id}`);
        this.tile(`s:${p.id}`, p.screen, `Screen shared by ${who(p)}`, 'tile-screen', p);
      }
    }
    for (const [key, figure] of this.tiles) {
      if (keep.has(key)) continue;
      const video = figure.querySelector('video');
      video.srcObject = null;
      figure.remove();
      this.tiles.delete(key);
    }
    // The big picture stays while it shows someone, or while nobody else is there
    // (it carries the waiting and paused messages).
    this.main.hidden = !primary && persons > 0;
    const caption = this.main.querySelector('figcaption');
    caption.textContent = primary ? who(primary) : '';
    caption.hidden = !primary;
    const video = this.main.querySelector('video');
    if (primary) video.setAttribute('aria-label', who(primary));
    persons += this.main.hidden ? 0 : 1;
    this.stage.dataset.count = String(persons);
    const screens = [...keep].filter((k) => k.startsWith('s:')).length;
    this.stage.dataset.screens = String(screens);
    this.stage.classList.toggle('multi', persons > 1 || screens > 0);
  }

  tile(key, stream, label, kind, person) {
    let figure = this.tiles.get(key);
    if (!figure) {
      figure = el('figure', null, `tile ${kind}`);
      figure.dataset.key = key;
      const video = el('video');
      video.autoplay = true;
      video.playsInline = true;
      video.srcObject = stream;
      figure.append(video, el('figcaption', null, 'tile-name'));
      this.stage.insertBefore(figure, this.before);
      this.tiles.set(key, figure);
      video.play().catch(() => {}); // the page was tapped already: sound may play
    }
    const video = figure.querySelector('video');
    if (video.srcObject !== stream) video.srcObject = stream;
    video.setAttribute('aria-label', label);
    if (person) figure.dataset.role = person.role;
    figure.querySelector('figcaption').textContent = label;
    return figure;
  }

  /** Start every tile's playback again (after a tap, or when the page is shown again). */
  play() {
    for (const figure of this.tiles.values()) figure.querySelector('video').play().catch(() => {});
  }
}
