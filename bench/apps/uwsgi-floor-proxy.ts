// The floor of any Node front proxy over Stratum's uwsgi hop, for the benchmark's
// `node-uwsgi-floor` row: node:http in front, kept uwsgi connections to a `stratum pool` behind,
// one request per connection at a time — and nothing else. No routing, no timeouts, no error
// handling, no header filtering, no observability: it answers the hello-world and would break on
// anything else. Whatever Stratum's master spends per request above this row is its own work;
// what this row spends is Node's HTTP server, four socket syscalls and the workers.
//
//   PORT=8080 UPSTREAM=/tmp/x/pool.sock CONNECTIONS=32 node bench/apps/uwsgi-floor-proxy.ts
import http from 'node:http';
import net from 'node:net';
import { encodePacket } from '../../src/uwsgi/codec.ts';

const port = Number(process.env.PORT);
const poolSocket = process.env.UPSTREAM!;
const connections = Number(process.env.CONNECTIONS ?? 32);

type Reply = (head: string, body: Buffer) => void;
interface Conn {
  socket: net.Socket;
  pending: Buffer | null;
  reply: Reply | null;
}

const idle: Conn[] = [];
const waiting: Array<(c: Conn) => void> = [];

function release(c: Conn): void {
  const next = waiting.shift();
  if (next) next(c);
  else idle.push(c);
}

function connect(): Conn {
  const c: Conn = { socket: net.connect(poolSocket), pending: null, reply: null };
  c.socket.setNoDelay(true);
  c.socket.on('data', (chunk: Buffer) => {
    const buf = c.pending ? Buffer.concat([c.pending, chunk]) : chunk;
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return void (c.pending = buf);
    const head = buf.toString('latin1', 0, end);
    const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
    if (buf.length < end + 4 + length) return void (c.pending = buf);
    c.pending = null;
    const reply = c.reply!;
    c.reply = null;
    reply(head, buf.subarray(end + 4, end + 4 + length));
    release(c);
  });
  return c;
}

const DROP = new Set(['connection', 'transfer-encoding', 'x-stratum-keepalive', 'x-stratum-timing']);

for (let i = 0; i < connections; i++) idle.push(connect());

http.createServer((req, res) => {
  const send = (c: Conn) => {
    c.reply = (head, body) => {
      const lines = head.split('\r\n');
      const headers: string[] = [];
      for (let i = 1; i < lines.length; i++) {
        const colon = lines[i]!.indexOf(':');
        const name = lines[i]!.slice(0, colon);
        if (!DROP.has(name.toLowerCase())) headers.push(name, lines[i]!.slice(colon + 1).trim());
      }
      res.writeHead(Number(lines[0]!.slice(9, 12)), headers);
      res.end(body);
    };
    c.socket.write(encodePacket([
      'REQUEST_METHOD', req.method!, 'REQUEST_URI', req.url!, 'PATH_INFO', req.url!, 'QUERY_STRING', '',
      'SERVER_PROTOCOL', 'HTTP/1.1', 'REMOTE_ADDR', '127.0.0.1', 'REMOTE_PORT', '0', 'SERVER_NAME', 'localhost',
      'SERVER_PORT', String(port), 'HTTP_HOST', req.headers.host ?? '', 'STRATUM_KEEPALIVE', '1',
    ]));
  };
  const c = idle.pop();
  if (c) send(c);
  else waiting.push(send);
}).listen(port, '127.0.0.1', () => console.log('ready'));

process.on('SIGTERM', () => process.exit(0));
