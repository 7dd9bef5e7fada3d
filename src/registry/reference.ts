/**
 * Image references as docker and nydusify write them: `[host[:port]/]repo[:tag][@digest]`.
 * A name without a registry host is Docker Hub's (`docker.io`, `library/` for one-component names),
 * whose API endpoint is `registry-1.docker.io`.
 */
import { InvalidReferenceError } from './errors.ts';

export const DOCKER_HUB = 'docker.io';
export const DOCKER_HUB_ENDPOINT = 'registry-1.docker.io';
const DOCKER_HUB_LEGACY = 'index.docker.io';
export const DEFAULT_TAG = 'latest';

export interface ImageReference {
  /** The registry as written (`docker.io` for Docker Hub), used for credentials and messages. */
  readonly registry: string;
  /** `host[:port]` the API is served on. */
  readonly endpoint: string;
  /** Repository path, e.g. `library/busybox`. */
  readonly repository: string;
  /** The tag, `latest` when neither tag nor digest was given. */
  readonly tag?: string;
  /** `sha256:<64 hex>` when the reference pins a digest. */
  readonly digest?: string;
}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const HOST = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]{1,5})?$/;

export function isDigest(s: string): boolean {
  return DIGEST.test(s);
}

/** Throws InvalidReferenceError unless `digest` is `sha256:<64 lowercase hex>`. */
export function checkDigest(digest: string, what = digest): string {
  if (!DIGEST.test(digest)) throw new InvalidReferenceError(what, `"${digest}" is not a sha256 digest (sha256:<64 hex>)`);
  return digest;
}

function looksLikeHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost' || component.startsWith('[');
}

export function parseReference(input: string): ImageReference {
  const s = input.trim();
  if (!s) throw new InvalidReferenceError(input, 'empty');
  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw new InvalidReferenceError(input, `digest "${digest}" is not sha256:<64 lowercase hex>`);
  }
  const slash = rest.indexOf('/');
  let registry = DOCKER_HUB;
  if (slash > 0 && looksLikeHost(rest.slice(0, slash))) {
    registry = rest.slice(0, slash);
    rest = rest.slice(slash + 1);
    if (!HOST.test(registry)) throw new InvalidReferenceError(input, `registry host "${registry}" is not host[:port]`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw new InvalidReferenceError(input, `tag "${tag}" is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
  }
  checkRepository(input, rest);
  if (!tag && !digest) tag = DEFAULT_TAG;
  return { ...repositoryOf(registry, rest), tag, digest };
}

/**
 * A repository on a registry given apart (nydusd's registry backend config: `host` and `repo`): the
 * host is the registry as written, a name without a dot (a cluster's `harbor` service) too, never
 * taken for Docker Hub's first path component. Throws InvalidReferenceError naming what is wrong.
 */
export function repositoryAt(host: string, repo: string): ImageReference {
  if (!HOST.test(host)) throw new InvalidReferenceError(`${host}/${repo}`, `registry host "${host}" is not host[:port]`);
  checkRepository(`${host}/${repo}`, repo);
  return { ...repositoryOf(host, repo), tag: DEFAULT_TAG };
}

function checkRepository(input: string, repository: string): void {
  if (!repository) throw new InvalidReferenceError(input, 'no repository name');
  for (const part of repository.split('/')) {
    if (!PATH_COMPONENT.test(part)) {
      throw new InvalidReferenceError(input, `repository component "${part}" must be lowercase letters, digits and separators (. _ __ -)`);
    }
  }
  if (repository.length > 255) throw new InvalidReferenceError(input, 'repository name longer than 255 characters');
}

/**
 * The registry, endpoint and repository of a checked repository on `registry`. Docker Hub's legacy
 * name is Docker Hub (as distribution/reference has it), and its one-component names are `library/`
 * ones, which Docker Hub alone knows them by.
 */
function repositoryOf(written: string, repository: string): Pick<ImageReference, 'registry' | 'endpoint' | 'repository'> {
  const registry = written === DOCKER_HUB_LEGACY ? DOCKER_HUB : written;
  if (registry !== DOCKER_HUB) return { registry, endpoint: registry, repository };
  return { registry, endpoint: DOCKER_HUB_ENDPOINT, repository: repository.includes('/') ? repository : `library/${repository}` };
}

/** The canonical string: `registry/repository[:tag][@digest]`. */
export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

/** The same repository at another tag or digest (for fetching an index's children by digest). */
export function withDigest(ref: ImageReference, digest: string): ImageReference {
  return { registry: ref.registry, endpoint: ref.endpoint, repository: ref.repository, digest: checkDigest(digest) };
}

export function withTag(ref: ImageReference, tag: string): ImageReference {
  if (!TAG.test(tag)) throw new InvalidReferenceError(tag, 'not a valid tag');
  return { registry: ref.registry, endpoint: ref.endpoint, repository: ref.repository, tag };
}

/** What a manifest request names: the digest when pinned, else the tag. */
export function manifestTarget(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? DEFAULT_TAG;
}
