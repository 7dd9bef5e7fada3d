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
import { Transport, header, type HttpRequest, type HttpResponse, type TransportOptions } from './transport.ts';

export interface RegistryClientOptions extends TransportOptions {
  /** Credentials for every registry, or per registry (`host[:port]` as written in references). */
  credentials?: Credentials | ((registry: string) => Credentials | undefined);
  /** Read docker's config.json when no explicit credentials apply (default true). */
  dockerConfig?: boolean;
  /** PATCH size of chunked uploads (default 8 MiB). */
  uploadChunkSize?: number;
  /** Largest manifest accepted, bytes (default 4 MiB, as distribution's limit). */
  maxManifestSize?: number;
}

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

  constructor(private readonly opts: RegistryClientOptions = {}) {
    this.transport = new Transport(opts);
    this.chunkSize = opts.uploadChunkSize ?? 8 << 20;
    this.maxManifestSize = opts.maxManifestSize ?? 4 << 20;
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
        const res = await this.transport.send(url.host, { method: 'GET', target: url.href, headers, reference: formatReference(ref) });
        return { status: res.status, body: await res.body.text() };
      });
      this.authorizers.set(ref.registry, a);
    }
    return a;
  }

  /** Sends with the cached authorization; on 401 answers the challenge and sends once more. */
  async call(ref: ImageReference, access: Action | string[], req: Omit<HttpRequest, 'reference'>): Promise<HttpResponse> {
    const scopes = typeof access === 'string' ? [repositoryScope(ref.repository, access)] : access;
    const auth = this.authorizer(ref);
    let authorization = auth.header(scopes);
    for (let refreshed = false; ; refreshed = true) {
      const headers = { ...req.headers, ...(authorization ? { authorization } : {}) };
      const res = await this.transport.send(ref.endpoint, { ...req, headers, reference: formatReference(ref) });
      if (res.status !== 401 || refreshed) return res;
      await res.body.dump();
      try {
        authorization = await auth.challenge(header(res.headers, 'www-authenticate'), scopes);
      } catch (e) {
        if (e instanceof RegistryError) throw e;
        const detail = (e as Error).message.replace(`registry ${ref.registry}: `, '');
        throw new RegistryError({ reference: formatReference(ref), method: req.method, path: res.url.pathname, status: 401, detail, cause: e }, (e as NydusError).errno ?? EACCES);
      }
    }
  }

  /** Throws a RegistryError naming the reference, the path and the status unless `res.status` is expected. */
  async expect(ref: ImageReference, method: string, res: HttpResponse, ...ok: number[]): Promise<void> {
    if (ok.includes(res.status)) return;
    const text = method === 'HEAD' ? '' : await res.body.text().catch(() => '');
    if (method === 'HEAD') await res.body.dump().catch(() => undefined);
    throw new RegistryError({ reference: formatReference(ref), method, path: res.url.pathname, status: res.status, ...describeErrorBody(text) });
  }

  /** Location of an upload session from a 202 answer, made absolute against the answering URL. */
  location(ref: ImageReference, method: string, res: HttpResponse): URL {
    const loc = header(res.headers, 'location');
    if (!loc) throw new RegistryError({ reference: formatReference(ref), method, path: res.url.pathname, status: res.status, detail: 'upload answer without Location' });
    return new URL(loc, res.url);
  }
}
