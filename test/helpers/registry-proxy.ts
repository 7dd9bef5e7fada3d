/**
 * In-process HTTP servers placed in front of a test registry (node:http only):
 * - FaultProxy forwards to the registry and injects faults on matching requests (error statuses,
 *   connection resets, stalls, a corrupted body, redirects, Range ignored), records what it saw, and
 *   can rewrite upload Locations to relative ones.
 * - TokenAuthProxy demands a Bearer token as distribution's token auth does and runs the token server
 *   that issues them (Basic credentials checked, scopes granted, tokens revocable).
 */
import http from 'node:http';
import crypto from 'node:crypto';
import type net from 'node:net';

export type Fault =
  | { kind: 'status'; status: number; headers?: Record<string, string> }
  | { kind: 'reset' }
  | { kind: 'reset-mid-body'; after: number }
  | { kind: 'stall' }
  | { kind: 'stall-mid-body'; after: number }
  | { kind: 'corrupt-body' }
  | { kind: 'redirect'; to: string }
  | { kind: 'ignore-range' }
  /** A range answered as nydus's nydus-backend-proxy (Rust) answers it: 200, the range's bytes, Content-Range with the range's length for total. */
  | { kind: 'range-as-200' };

export interface FaultRule {
  match: (req: http.IncomingMessage) => boolean;
  fault: Fault;
  /** How many matching requests get the fault (default 1; Infinity for all). */
  times?: number;
}

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  fault?: Fault['kind'];
  /** Body bytes the upstream answered with (what a counting proxy in front of a registry sees fetched). */
  bytes: number;
}

export interface ProxyOptions {
  /** Address to listen on (default 127.0.0.1). */
  listenHost?: string;
  /** Header added to every forwarded request (e.g. the registry's Basic credentials for a "CDN"). */
  upstreamAuthorization?: string;
  /** Rewrite absolute Location headers to paths (tests relative upload Locations). */
  relativeLocations?: boolean;
  /** Rewrite Location headers to this origin (`http://host:port`): a registry naming another host for its uploads. */
  locationsTo?: string;
}

function listen(server: http.Server, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });
}

function closeServer(server: http.Server, sockets: Set<net.Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** Forwards `req` to `upstream` (http://host:port) and calls `onResponse` with the upstream answer. */
function forward(
  upstream: URL,
  req: http.IncomingMessage,
  headers: http.OutgoingHttpHeaders,
  onResponse: (res: http.IncomingMessage) => void,
  onError: (e: Error) => void,
): void {
  const out = http.request(
    { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers },
    onResponse,
  );
  out.on('error', onError);
  req.pipe(out);
}

export class FaultProxy {
  readonly seen: SeenRequest[] = [];
  private rules: Array<FaultRule & { left: number }> = [];
  private readonly sockets = new Set<net.Socket>();
  private readonly server: http.Server;
  port = 0;
  host = '';

  private constructor(private readonly upstream: URL, private readonly opts: ProxyOptions) {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  static async start(upstream: string, opts: ProxyOptions = {}): Promise<FaultProxy> {
    const p = new FaultProxy(new URL(upstream), opts);
    const listenHost = opts.listenHost ?? '127.0.0.1';
    p.port = await listen(p.server, listenHost);
    p.host = `${listenHost}:${p.port}`;
    return p;
  }

  get url(): string {
    return `http://${this.host}`;
  }

  /** Body bytes fetched through the proxy by requests whose path matches `path` (all when omitted). */
  bytesFetched(path?: RegExp): number {
    return this.seen.filter((r) => !path || path.test(r.url)).reduce((n, r) => n + r.bytes, 0);
  }

  /** Adds a rule; rules are tried in order. */
  inject(rule: FaultRule): this {
    this.rules.push({ ...rule, left: rule.times ?? 1 });
    return this;
  }

  clearFaults(): void {
    this.rules = [];
  }

  private pick(req: http.IncomingMessage): Fault | undefined {
    for (const r of this.rules) {
      if (r.left > 0 && r.match(req)) {
        r.left--;
        return r.fault;
      }
    }
    return undefined;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const fault = this.pick(req);
    const seen: SeenRequest = { method: req.method!, url: req.url!, headers: req.headers, fault: fault?.kind, bytes: 0 };
    this.seen.push(seen);
    const headers: http.OutgoingHttpHeaders = { ...req.headers };
    if (this.opts.upstreamAuthorization) headers.authorization = this.opts.upstreamAuthorization;
    switch (fault?.kind) {
      case 'status':
        req.resume();
        res.writeHead(fault.status, { 'content-type': 'text/plain', ...fault.headers });
        res.end(`injected ${fault.status}\n`);
        return;
      case 'reset':
        req.socket.destroy();
        return;
      case 'stall':
        req.resume();
        return; // Never answers; the socket is destroyed when the proxy closes.
      case 'redirect':
        req.resume();
        res.writeHead(307, { location: `${fault.to}${req.url}` });
        res.end();
        return;
      case 'ignore-range':
        delete headers.range;
        break;
    }
    forward(this.upstream, req, headers, (up) => {
      up.on('data', (d: Buffer) => (seen.bytes += d.length));
      const outHeaders = { ...up.headers };
      if (this.opts.relativeLocations && typeof outHeaders.location === 'string') {
        const loc = new URL(outHeaders.location, this.url);
        outHeaders.location = loc.pathname + loc.search;
      }
      if (this.opts.locationsTo && typeof outHeaders.location === 'string') {
        const loc = new URL(outHeaders.location, this.url);
        outHeaders.location = this.opts.locationsTo + loc.pathname + loc.search;
      }
      if (fault?.kind === 'corrupt-body') {
        const parts: Buffer[] = [];
        up.on('data', (d: Buffer) => parts.push(d));
        up.on('end', () => {
          const body = Buffer.concat(parts);
          if (body.length) body[body.length >> 1] ^= 0xff;
          res.writeHead(up.statusCode!, outHeaders);
          res.end(body);
        });
        return;
      }
      if (fault?.kind === 'range-as-200' && up.statusCode === 206) {
        const m = /^bytes (\d+)-(\d+)\//.exec(String(outHeaders['content-range']));
        if (m) outHeaders['content-range'] = `bytes ${m[1]}-${m[2]}/${Number(m[2]) - Number(m[1]) + 1}`;
        res.writeHead(200, outHeaders);
        up.pipe(res);
        return;
      }
      res.writeHead(up.statusCode!, outHeaders);
      if (fault?.kind === 'reset-mid-body' || fault?.kind === 'stall-mid-body') {
        // Sends the first `after` bytes, then breaks the connection or goes silent on it.
        let sent = 0;
        up.on('data', (d: Buffer) => {
          if (sent >= fault.after) return;
          const part = d.subarray(0, fault.after - sent);
          sent += part.length;
          res.write(part, () => {
            if (sent >= fault.after && fault.kind === 'reset-mid-body') req.socket.destroy();
          });
        });
        return;
      }
      up.pipe(res);
    }, () => req.socket.destroy());
  }

  close(): Promise<void> {
    return closeServer(this.server, this.sockets);
  }
}

/** Registry name and scope a request needs, as distribution's token auth computes them. */
function neededScopes(method: string, url: string): string[] {
  const u = new URL(url, 'http://x');
  const m = /^\/v2\/(.+?)\/(manifests|blobs|tags)\//.exec(u.pathname);
  if (!m) return [];
  const action = method === 'GET' || method === 'HEAD' ? 'pull' : 'pull,push';
  const scopes = [`repository:${m[1]}:${action}`];
  const from = u.searchParams.get('from');
  if (from) scopes.push(`repository:${from}:pull`);
  return scopes;
}

function grants(granted: Set<string>, scope: string): boolean {
  const [type, name, actions] = scope.split(':');
  return actions.split(',').every((a) => granted.has(`${type}:${name}:${a}`));
}

export interface TokenAuthOptions {
  users: Record<string, string>;
  /** Field the token server answers with (default 'token'). */
  tokenField?: 'token' | 'access_token';
  /** expires_in, seconds (default 300). */
  expiresIn?: number;
}

export class TokenAuthProxy {
  /** Token requests answered (counted whether granted or refused). */
  tokenRequests = 0;
  readonly tokenRequestScopes: string[][] = [];
  private readonly tokens = new Map<string, Set<string>>();
  private readonly sockets = new Set<net.Socket>();
  private readonly tokenServer: http.Server;
  private readonly proxy: http.Server;
  host = '';
  realm = '';

  private constructor(private readonly upstream: URL, private readonly opts: TokenAuthOptions) {
    this.tokenServer = http.createServer((req, res) => this.issue(req, res));
    this.proxy = http.createServer((req, res) => this.guard(req, res));
    for (const s of [this.tokenServer, this.proxy]) {
      s.on('connection', (c) => {
        this.sockets.add(c);
        c.on('close', () => this.sockets.delete(c));
      });
    }
  }

  static async start(upstream: string, opts: TokenAuthOptions): Promise<TokenAuthProxy> {
    const p = new TokenAuthProxy(new URL(upstream), opts);
    p.realm = `http://127.0.0.1:${await listen(p.tokenServer, '127.0.0.1')}/token`;
    p.host = `127.0.0.1:${await listen(p.proxy, '127.0.0.1')}`;
    return p;
  }

  /** Every token issued so far stops working (as an expiry or key rotation would). */
  revokeAll(): void {
    this.tokens.clear();
  }

  private issue(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.tokenRequests++;
    const u = new URL(req.url!, 'http://x');
    const scopes = u.searchParams.getAll('scope');
    this.tokenRequestScopes.push(scopes);
    const auth = req.headers.authorization;
    let user: string | undefined;
    if (auth?.startsWith('Basic ')) {
      const [name, ...rest] = Buffer.from(auth.slice(6), 'base64').toString().split(':');
      if (this.opts.users[name] !== rest.join(':')) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end('{"details":"incorrect username or password"}');
        return;
      }
      user = name;
    }
    const granted = new Set<string>();
    for (const s of scopes) {
      const [type, name, actions] = s.split(':');
      // Anonymous users may pull; pushing needs a user.
      for (const a of actions.split(',')) if (user || a === 'pull') granted.add(`${type}:${name}:${a}`);
    }
    const token = crypto.randomBytes(16).toString('hex');
    this.tokens.set(token, granted);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ [this.opts.tokenField ?? 'token']: token, expires_in: this.opts.expiresIn ?? 300, issued_at: new Date().toISOString() }));
  }

  private guard(req: http.IncomingMessage, res: http.ServerResponse): void {
    const scopes = neededScopes(req.method!, req.url!);
    const auth = req.headers.authorization;
    const granted = auth?.startsWith('Bearer ') ? this.tokens.get(auth.slice(7)) : undefined;
    if (!granted || !scopes.every((s) => grants(granted, s))) {
      req.resume();
      const scope = scopes.length ? `,scope="${scopes.join(' ')}"` : '';
      res.writeHead(401, {
        'content-type': 'application/json',
        'www-authenticate': `Bearer realm="${this.realm}",service="nydus-ts-test"${scope}`,
      });
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return;
    }
    const headers = { ...req.headers };
    delete headers.authorization;
    forward(this.upstream, req, headers, (up) => {
      res.writeHead(up.statusCode!, up.headers);
      up.pipe(res);
    }, () => req.socket.destroy());
  }

  async close(): Promise<void> {
    await closeServer(this.tokenServer, this.sockets);
    await closeServer(this.proxy, this.sockets);
  }
}
