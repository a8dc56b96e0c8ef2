// Entry point of the page at `/`: defines <picam-player>, which starts playing as soon as it
// is in the document (index.html has one). Options come from the query string; see options.js.

import { definePlayerElement } from './player.js';

definePlayerElement();
