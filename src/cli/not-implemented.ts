/** Shared body of the commands that are not built yet: a clear message and exit status 2. */
export function notImplemented(name: string): never {
  process.stderr.write(`${name}: not implemented yet in nydus-ts\n`);
  process.exit(2);
}
