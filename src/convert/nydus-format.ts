/**
 * How a Nydus image sits in a registry, as nydusify (nydus-snapshotter's pkg/converter) writes it:
 * one layer per Nydus blob, then the merged bootstrap as a gzip tar layer holding `image/image.boot`.
 */
import { MediaType, type Descriptor } from '../registry/index.ts';

export const ANNOTATION_NYDUS_BLOB = 'containerd.io/snapshot/nydus-blob';
export const ANNOTATION_NYDUS_BOOTSTRAP = 'containerd.io/snapshot/nydus-bootstrap';
export const ANNOTATION_NYDUS_FS_VERSION = 'containerd.io/snapshot/nydus-fs-version';
/** Path of the bootstrap inside the bootstrap layer's tar. */
export const BOOTSTRAP_IN_LAYER = 'image/image.boot';
/** The history entry nydusify appends for the bootstrap layer. */
export const BOOTSTRAP_HISTORY = { created_by: 'Nydus Converter', comment: 'Nydus Bootstrap Layer' };

export function nydusBlobDescriptor(digest: string, size: number): Descriptor {
  return { mediaType: MediaType.nydusBlob, digest, size, annotations: { [ANNOTATION_NYDUS_BLOB]: 'true' } };
}

/** The bootstrap layer is OCI gzip in an OCI manifest, Docker's gzip layer type in a Docker one. */
export function bootstrapDescriptor(manifestMediaType: string, digest: string, size: number, fsVersion: string): Descriptor {
  const mediaType = manifestMediaType === MediaType.dockerManifest ? MediaType.dockerLayerGzip : MediaType.ociLayerGzip;
  return {
    mediaType, digest, size,
    annotations: { [ANNOTATION_NYDUS_FS_VERSION]: fsVersion, [ANNOTATION_NYDUS_BOOTSTRAP]: 'true' },
  };
}

/** How nydusify --merge-platform marks the Nydus image of a platform in an index: artifactType (v2.3.5 on), or os.features before. */
export const ARTIFACT_TYPE_NYDUS_MANIFEST = 'application/vnd.nydus.image.manifest.v1+json';
export const OS_FEATURE_NYDUS = 'nydus.remoteimage.v1';

/** An index entry marked as a Nydus image (ARTIFACT_TYPE_NYDUS_MANIFEST, OS_FEATURE_NYDUS). */
export function isNydusIndexEntry(d: Descriptor): boolean {
  return d.artifactType === ARTIFACT_TYPE_NYDUS_MANIFEST || !!d.platform?.['os.features']?.includes(OS_FEATURE_NYDUS);
}

export function isNydusBlobLayer(d: Descriptor): boolean {
  return d.mediaType === MediaType.nydusBlob && d.annotations?.[ANNOTATION_NYDUS_BLOB] === 'true';
}

export function isBootstrapLayer(d: Descriptor): boolean {
  return d.annotations?.[ANNOTATION_NYDUS_BOOTSTRAP] === 'true';
}
