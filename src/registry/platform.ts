/**
 * Platforms as `os/arch[/variant]` (nydusify's `--platform`) and their selection from an image index.
 * Architecture aliases are normalized the way containerd does it (x86_64 -> amd64, aarch64 -> arm64).
 */
import { InvalidReferenceError } from './errors.ts';
import type { Descriptor, Platform } from './media-types.ts';

const ARCH_ALIASES: Record<string, string> = { x86_64: 'amd64', 'x86-64': 'amd64', aarch64: 'arm64', armhf: 'arm', armel: 'arm', i386: '386' };
const DEFAULT_VARIANT: Record<string, string> = { arm64: 'v8', arm: 'v7' };

export function normalizePlatform(p: Platform): Platform {
  const architecture = ARCH_ALIASES[p.architecture] ?? p.architecture;
  let variant = p.variant;
  if (p.architecture === 'armel' && !variant) variant = 'v6';
  return variant ? { os: p.os, architecture, variant } : { os: p.os, architecture };
}

/** `linux/arm64/v8` -> Platform. */
export function parsePlatform(spec: string): Platform {
  const parts = spec.trim().split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((x) => !/^[A-Za-z0-9_.-]+$/.test(x))) {
    throw new InvalidReferenceError(spec, 'platform must be os/arch or os/arch/variant');
  }
  return normalizePlatform({ os: parts[0].toLowerCase(), architecture: parts[1].toLowerCase(), variant: parts[2]?.toLowerCase() });
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

const NODE_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64', loong64: 'loong64', mips64el: 'mips64le' };

/** nydusify's default `--platform`: linux and the architecture this program runs on. */
export function defaultPlatform(): Platform {
  return { os: 'linux', architecture: NODE_ARCH[process.arch] ?? process.arch };
}

/** Whether `candidate` (from an index) serves `wanted`. A wanted platform without a variant takes any. */
export function platformMatches(wanted: Platform, candidate: Platform): boolean {
  const w = normalizePlatform(wanted);
  const c = normalizePlatform(candidate);
  if (w.os !== c.os || w.architecture !== c.architecture) return false;
  if (!w.variant) return true;
  return (c.variant ?? DEFAULT_VARIANT[c.architecture]) === w.variant;
}

/** Attestations and other entries with an `unknown` platform are not images of a platform. */
function isRealPlatform(d: Descriptor): boolean {
  return !!d.platform && d.platform.os !== 'unknown' && d.platform.architecture !== 'unknown';
}

/**
 * Index entries for `wanted`: every real platform for 'all', else the best match for one platform
 * (an exact variant first, then the architecture's default variant, then any). Empty when none.
 * `prefer`: of two entries for one platform, the one it holds (for 'all', the other is left out).
 */
export function selectPlatforms(manifests: readonly Descriptor[], wanted: Platform | 'all', prefer?: (d: Descriptor) => boolean): Descriptor[] {
  if (wanted === 'all') {
    const real = manifests.filter(isRealPlatform);
    if (!prefer) return real;
    const same = (a: Descriptor, b: Descriptor) => platformMatches(a.platform!, b.platform!) && platformMatches(b.platform!, a.platform!);
    return real.filter((d) => prefer(d) || !real.some((o) => o !== d && prefer(o) && same(o, d)));
  }
  const matching = manifests.filter((d) => isRealPlatform(d) && platformMatches(wanted, d.platform!));
  if (matching.length <= 1) return matching;
  const w = normalizePlatform(wanted);
  // `prefer` first: an index may hold two images of one platform (nydusify --merge-platform: the OCI
  // image and its Nydus conversion), and the caller says which it wants.
  const rank = (d: Descriptor) => {
    const v = normalizePlatform(d.platform!).variant;
    const variant = w.variant && v === w.variant ? 0 : !v || v === DEFAULT_VARIANT[w.architecture] ? 1 : 2;
    return (prefer && !prefer(d) ? 3 : 0) + variant;
  };
  return [matching.slice().sort((a, b) => rank(a) - rank(b))[0]];
}
