/** The registry client's public surface (see client.ts for the operations). */
export { RegistryClient } from './client.ts';
export type {
  RegistryClientOptions, RefLike, FetchedManifest, ManifestHead, PlatformImage, ResolvedImage,
  BlobStreamOptions, RangeReadOptions, StreamSource, PushBlobOptions, PushedBlob, PushStreamOptions,
} from './client.ts';
export type { TransportOptions } from './transport.ts';
export { parseReference, formatReference, withDigest, withTag, isDigest, type ImageReference } from './reference.ts';
export { parsePlatform, formatPlatform, defaultPlatform, platformMatches, selectPlatforms } from './platform.ts';
export { MediaType, MANIFEST_ACCEPT, isIndexType, isImageManifestType } from './media-types.ts';
export type { Descriptor, ImageManifest, ImageIndex, Platform } from './media-types.ts';
export { dockerConfigCredentials, dockerConfigPath, credentialsFromAuth, type Credentials } from './credentials.ts';
export { RegistryError, DigestMismatchError, InvalidReferenceError } from './errors.ts';
