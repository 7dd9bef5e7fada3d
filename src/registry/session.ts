/**
 * What every registry operation shares: the transport, authorization per registry, and the request
 * helpers (send with authorization and one refresh on 401; turn an unexpected status into an error).
 */
import { createHash } from 'node:crypto';
import { Authorizer, repositoryScope, type Action } from './auth.ts';
import { dockerConfigCredentials, type Credentials } from './credentials.ts';
import { NydusError } from '../../erofs/errors.ts';
import { EACCES, RegistryError, describeErrorBody } from './errors.ts';
import { formatReference, parseReference, type ImageReference } from './reference.ts';
import {
  ERROR_BODY_EXCERPT, Transport, drain, header, readBounded, type HttpRequest, type HttpResponse, type TransportOptions,
} from './transport.ts';

export interface RegistryClientOptions extends TransportOptions {
  /** Credentials for every registry, or per registry (`host[:port]` as written in references). */
  credentials?: Credentials | ((registry: string) => Credentials | undefined);
  /** Read docker's config.json when no explicit credentials apply (default true). */
  dockerConfig?: boolean;
  /** PATCH size of chunked uploads (default 8 MiB). */
  uploadChunkSize?: number;
  /** Largest manifest accepted, bytes (default 4 MiB, as distribution's limit). */
  maxManifestSize?: number;
  /** Largest image config accepted, bytes (default 4 MiB, as containers/image's MaxConfigBodySize). */
  maxConfigSize?: number;
}

/** Longest an error answer's excerpt is waited for: it only adds words to the error. */
const ERROR_BODY_DEADLINE_MS = 10_000;

/** Largest token answer read (containers/image's MaxAuthTokenBodySize). */
export const MAX_TOKEN_ANSWER = 1 << 20;

/** A reference object or its string form. */
export type RefLike = ImageReference | string;

export function sha256(data: Uint8Array): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function toRef(r: RefLike): ImageReference {
  return typeof r === 'string' ? parseReference(r) : r;
}

export class RegistrySession {
  readonly transport: Transport;
  readonly authorizers = new Map<string, Authorizer>();
  readonly chunkSize: number;
  readonly maxManifestSize: number;
  readonly maxConfigSize: number;

  constructor(private readonly opts: RegistryClientOptions = {}) {
    this.transport = new Transport(opts);
    this.chunkSize = opts.uploadChunkSize ?? 8 << 20;
    this.maxManifestSize = opts.maxManifestSize ?? 4 << 20;
    this.maxConfigSize = opts.maxConfigSize ?? 4 << 20;
  }

  private credentialsFor(registry: string): Credentials | undefined {
    const c = this.opts.credentials;
    const explicit = typeof c === 'function' ? c(registry) : c;
    if (explicit) return explicit;
    if (this.opts.dockerConfig === false) return undefined;
    return dockerConfigCredentials(registry, this.opts.env ?? process.env);
  }

  private authorizer(ref: ImageReference): Authorizer {
    let a = this.authorizers.get(ref.registry);
    if (!a) {
      a = new Authorizer(ref.registry, this.credentialsFor(ref.registry), async (url, headers) => {
        const realm = `${url.origin}${url.pathname}`;
        // The whole token request, its answer included, within the document deadline.
        const deadline = this.transport.documentTimeoutMs;
        const signal = AbortSignal.timeout(deadline);
        const late = () => new RegistryError({ reference: formatReference(ref), method: 'GET', path: realm, status: 200, detail: `token answer not received whole within ${deadline / 1000} s` });
        const res = await this.transport.send(url.host, { method: 'GET', target: url.href, headers, reference: formatReference(ref), signal }).catch((e) => {
          // Name the token realm (maybe another host), not only its path.
          const detail = signal.aborted ? `no answer within ${deadline / 1000} s` : e instanceof RegistryError ? e.detail ?? e.message : (e as Error).message;
          throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: realm, detail: `token request: ${detail}`, cause: e });
        });
        if (res.status !== 200) {
          await drain(res.body);
          return { status: res.status, body: '' };
        }
        const got = await readBounded(res.body, MAX_TOKEN_ANSWER, deadline).catch((e: Error) => {
          if (signal.aborted) throw late();
          throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: realm, status: 200, detail: `reading the token answer: ${e.message}`, cause: e });
        });
        if (got.over) throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: realm, status: 200, detail: `token answer larger than ${MAX_TOKEN_ANSWER} bytes` });
        if (got.timedOut) throw late();
        return { status: res.status, body: got.bytes.toString('utf8') };
      });
      this.authorizers.set(ref.registry, a);
    }
    return a;
  }

  /**
   * Sends with the cached authorization; on 401 answers the challenge and sends once more. A target
   * on another host (an upload Location naming one) gets neither: the registry's credentials and
   * tokens are for the registry alone, as docker's client authorizes only hosts that challenged it.
   */
  async call(ref: ImageReference, access: Action | string[], req: Omit<HttpRequest, 'reference'>): Promise<HttpResponse> {
    // (Both as URLs: an endpoint written with its scheme's default port is the same host.)
    const registryHost = this.transport.resolve(ref.endpoint, '/').host;
    if (this.transport.resolve(ref.endpoint, req.target).host !== registryHost) {
      const { authorization: _dropped, ...headers } = req.headers ?? {};
      return this.transport.send(ref.endpoint, { ...req, headers, reference: formatReference(ref) });
    }
    const scopes = typeof access === 'string' ? [repositoryScope(ref.repository, access)] : access;
    const auth = this.authorizer(ref);
    let authorization = auth.header(scopes);
    for (let refreshed = false; ; refreshed = true) {
      const headers = { ...req.headers, ...(authorization ? { authorization } : {}) };
      const res = await this.transport.send(ref.endpoint, { ...req, headers, reference: formatReference(ref) });
      if (res.status !== 401 || refreshed) return res;
      await drain(res.body);
      // A challenge from the host a redirect led to (blob storage) is not answered: its realm would
      // get the registry's credentials, and its token would go to the registry.
      if (res.url.host !== registryHost) {
        throw new RegistryError({ reference: formatReference(ref), method: req.method, path: res.url.pathname, status: 401,
          detail: `${res.url.host}, where the registry redirected the request, asks for authorization; the registry's credentials are for the registry alone` }, EACCES);
      }
      try {
        authorization = await auth.challenge(header(res.headers, 'www-authenticate'), scopes);
      } catch (e) {
        if (e instanceof RegistryError) throw e;
        const detail = (e as Error).message.replace(`registry ${ref.registry}: `, '');
        throw new RegistryError({ reference: formatReference(ref), method: req.method, path: res.url.pathname, status: 401, detail, cause: e }, (e as NydusError).errno ?? EACCES);
      }
    }
  }

  /**
   * Throws a RegistryError naming the reference, the path and the status unless `res.status` is
   * expected. Of an error answer only its first ERROR_BODY_EXCERPT bytes are read, within the document
   * deadline; the rest is dropped with the connection.
   */
  async expect(ref: ImageReference, method: string, res: HttpResponse, ...ok: number[]): Promise<void> {
    if (ok.includes(res.status)) return;
    let text = '';
    if (method === 'HEAD') await drain(res.body);
    else {
      const got = await readBounded(res.body, ERROR_BODY_EXCERPT, Math.min(this.transport.documentTimeoutMs, ERROR_BODY_DEADLINE_MS), { keepPartial: true }).catch(() => undefined);
      text = got?.bytes.toString('utf8') ?? '';
    }
    throw new RegistryError({ reference: formatReference(ref), method, path: res.url.pathname, status: res.status, ...describeErrorBody(text) });
  }

  /** Location of an upload session from a 202 answer, made absolute against the answering URL. */
  location(ref: ImageReference, method: string, res: HttpResponse): URL {
    const loc = header(res.headers, 'location');
    if (!loc) throw new RegistryError({ reference: formatReference(ref), method, path: res.url.pathname, status: res.status, detail: 'upload answer without Location' });
    try {
      return new URL(loc, res.url);
    } catch {
      throw new RegistryError({ reference: formatReference(ref), method, path: res.url.pathname, status: res.status, detail: `upload answer's Location ${JSON.stringify(loc.slice(0, 200))} is not a URL` });
    }
  }
}
