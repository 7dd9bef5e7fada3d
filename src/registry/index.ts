/** The registry client's public surface (see client.ts for the operations). */
export { RegistryClient } from './client.ts';
export type { RegistryClientOptions, RefLike } from './session.ts';
export type { FetchedManifest, ManifestHead, PlatformImage, ResolvedImage } from './manifests.ts';
export { offeredPlatforms } from './manifests.ts';
export type { BlobStreamOptions, GetBlobOptions, ImageConfig, RangeReadOptions } from './blobs.ts';
export { MAX_BLOB_IN_MEMORY } from './blobs.ts';
export { MAX_INDEX_ENTRIES, MAX_JSON_DEPTH, MAX_RESOLVED_MANIFEST_BYTES } from './validate.ts';
export { MAX_TOKEN_ANSWER } from './session.ts';
export { ERROR_BODY_EXCERPT } from './transport.ts';
export type { StreamSource, PushBlobOptions, PushedBlob, PushStreamOptions } from './upload.ts';
export type { TransportOptions } from './transport.ts';
export { parseReference, repositoryAt, formatReference, withDigest, withTag, isDigest, type ImageReference } from './reference.ts';
export { parsePlatform, formatPlatform, defaultPlatform, platformMatches, selectPlatforms } from './platform.ts';
export { MediaType, MANIFEST_ACCEPT, isIndexType, isImageManifestType } from './media-types.ts';
export type { Descriptor, ImageManifest, ImageIndex, Platform } from './media-types.ts';
export { dockerConfigCredentials, dockerConfigPath, credentialsFromAuth, type Credentials } from './credentials.ts';
export { RegistryError, DigestMismatchError, InvalidReferenceError } from './errors.ts';
