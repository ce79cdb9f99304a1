// Quick exit on the plain message pages: leave for a neutral page without a
// history entry, so Back does not return here.
const link = document.getElementById('quick-exit');
if (link) {
  link.addEventListener('click', (event) => {
    event.preventDefault();
    location.replace(link.href);
  });
}
