/** Errors of the format module. Every error carries an errno, so the daemon can answer the kernel with it. */

export const EIO = 5;
export const ENOENT = 2;
export const EINVAL = 22;
/** The kernel's EFSCORRUPTED is EUCLEAN. */
export const EFSCORRUPTED = 117;

export class NydusError extends Error {
  /** `cause`: what failed underneath, e.g. a system error's code ('EBUSY'). */
  constructor(message: string, readonly errno: number = EIO, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'NydusError';
  }
}

/** A corrupt, truncated or foreign image. */
export class FormatError extends NydusError {
  constructor(message: string) {
    super(message, EFSCORRUPTED);
    this.name = 'FormatError';
  }
}
