// screen.js: the "Share screen" button of the victim's page (desktop browsers) and
// the console: start and stop sharing through call.js, say what happened, and follow
// a share stopped from the browser's own bar.
import { Call } from '/static/call.js';

export class ScreenButton {
  /**
   * @param {HTMLButtonElement} button
   * @param {(text: string) => void} say  tells the person what happened
   * ``supported`` is false on phones (no getDisplayMedia): the button stays hidden.
   */
  constructor(button, say) {
    this.button = button;
    this.say = say;
    this.call = null;
    this.supported = Call.canShareScreen();
    button.hidden = !this.supported;
    this.label(false);
    button.addEventListener('click', () => this.toggle());
  }

  /** The call this button shares into (the console opens one call after another). */
  attach(call) {
    this.call = call;
    this.label(false);
    call.addEventListener('screen', (e) => {
      if (call !== this.call) return;
      this.label(e.detail);
      this.say(e.detail ? 'You are sharing your screen. Everyone in the call can see it.' : '');
    });
  }

  label(on) { this.button.textContent = on ? 'Stop sharing screen' : 'Share screen'; }

  async toggle() {
    const call = this.call;
    if (!call) return;
    if (call.screen) { await call.stopScreenShare(); return; }
    this.button.disabled = true;
    try {
      await call.startScreenShare();
    } catch (err) {
      this.say(err.name === 'NotAllowedError' ? 'Screen sharing was cancelled or blocked.'
        : `Your screen could not be shared (${err.name || 'error'}).`);
    } finally {
      this.button.disabled = false;
    }
  }
}
