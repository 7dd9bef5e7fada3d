/**
 * Errors of the registry client. Each names the image reference, the request (method and URL path)
 * and the HTTP status when there was one, so a failed pull or push says where it failed.
 */
import { NydusError, EIO, EINVAL, ENOENT } from '../../erofs/errors.ts';

export const EACCES = 13;

/** A reference string that is not `host[:port]/repo[:tag][@digest]`. */
export class InvalidReferenceError extends NydusError {
  constructor(reference: string, why: string) {
    super(`invalid image reference "${reference}": ${why}`, EINVAL);
    this.name = 'InvalidReferenceError';
  }
}

export interface RegistryErrorInfo {
  /** The image reference (or `host/repo`) the request was made for. */
  reference: string;
  method: string;
  /** Path and query of the URL (never credentials). */
  path: string;
  /** HTTP status, absent for network errors. */
  status?: number;
  /** First error code of a distribution-spec error body (MANIFEST_UNKNOWN, BLOB_UNKNOWN, ...). */
  code?: string;
  detail?: string;
  cause?: unknown;
}

function errnoFor(status: number | undefined): number {
  if (status === 404) return ENOENT;
  if (status === 401 || status === 403) return EACCES;
  if (status !== undefined && status >= 400 && status < 500 && status !== 429) return EINVAL;
  return EIO;
}

export class RegistryError extends NydusError {
  readonly reference: string;
  readonly method: string;
  readonly path: string;
  readonly status?: number;
  readonly code?: string;
  /** What went wrong, without the reference, request and status. */
  readonly detail?: string;

  constructor(info: RegistryErrorInfo, errno = errnoFor(info.status)) {
    const status = info.status !== undefined ? `: HTTP ${info.status}` : '';
    const code = info.code ? ` ${info.code}` : '';
    const detail = info.detail ? `: ${info.detail}` : '';
    super(`registry ${info.reference}: ${info.method} ${info.path}${status}${code}${detail}`, errno);
    this.name = 'RegistryError';
    this.reference = info.reference;
    this.method = info.method;
    this.path = info.path;
    this.status = info.status;
    this.code = info.code;
    this.detail = info.detail;
    if (info.cause !== undefined) (this as { cause?: unknown }).cause = info.cause;
  }
}

/** Content whose sha256 (or size) is not what its descriptor or URL says: never handed on as good. */
export class DigestMismatchError extends RegistryError {
  constructor(info: Omit<RegistryErrorInfo, 'detail' | 'status'>, expected: string, actual: string) {
    super({ ...info, detail: `content mismatch: expected ${expected}, got ${actual}` }, EIO);
    this.name = 'DigestMismatchError';
  }
}

/** Parses a distribution-spec error body (`{"errors":[{"code","message"}]}`) into code and text. */
export function describeErrorBody(body: string): { code?: string; detail?: string } {
  try {
    const parsed = JSON.parse(body) as { errors?: Array<{ code?: string; message?: string }> };
    const first = parsed.errors?.[0];
    if (first) return { code: first.code, detail: first.message };
  } catch {
    // Not JSON: keep a short excerpt of the text.
  }
  const text = body.trim().slice(0, 200);
  return text ? { detail: text } : {};
}
