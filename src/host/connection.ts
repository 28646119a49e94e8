// A Duplex that node:http's Server takes as a client connection (`server.emit('connection', d)`):
// the uwsgi bridge (one uwsgi connection) and the h2 stream bridge (one HTTP/2 stream) both feed
// the HTTP/1 parser this way. The Server calls these socket methods on every connection it gets;
// a bridge has no timers or TCP options of its own, so each is a no-op.

import { Duplex } from 'node:stream';

export abstract class ConnectionBridge extends Duplex {
  setTimeout(): this {
    return this;
  }
  setNoDelay(): this {
    return this;
  }
  setKeepAlive(): this {
    return this;
  }
  ref(): this {
    return this;
  }
  unref(): this {
    return this;
  }
}
