// Entry point of the page (at `/` and at every `/cam/<name>/`): defines <picam-player>, which
// starts playing as soon as it is in the document (index.html has one). Options come from the
// query string (see options.js), the stream and the view from the address (see streams.js).

import { definePlayerElement } from './app.js';

definePlayerElement();
