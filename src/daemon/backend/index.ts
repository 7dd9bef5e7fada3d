/** The backend an image's config names, counting into `metrics` (its type's and its image's). */
import type { BackendConfig } from '../config.ts';
import { HttpProxyBackend } from './http-proxy.ts';
import { type BlobBackend, LocalFsBackend } from './localfs.ts';
import type { MetricsSink } from './metrics.ts';
import { RegistryBackend } from './registry.ts';

export function createBackend(config: BackendConfig, metrics: MetricsSink): BlobBackend {
  switch (config.type) {
    case 'localfs': return new LocalFsBackend(config, metrics);
    case 'registry': return new RegistryBackend(config, metrics);
    case 'http-proxy': return new HttpProxyBackend(config, metrics);
  }
}
