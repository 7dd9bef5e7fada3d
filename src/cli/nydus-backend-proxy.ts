/**
 * nydus-backend-proxy: serves a directory of nydus blobs over HTTP (HEAD, GET with Range) for nydusd's
 * registry backend, as nydus's contrib/nydus-backend-proxy does. Address and port default as that
 * server's (127.0.0.1:8000, or ROCKET_ADDRESS / ROCKET_PORT).
 */
import './stack-maps.ts';
import fs from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';
import { startBlobProxy } from '../daemon/backend/proxy-server.ts';
import { cliParser, runMain } from './main.ts';

await runMain('nydus-backend-proxy', async () => {
  const args = await cliParser('nydus-backend-proxy')
    .usage('$0 --blobsdir DIR [--address ADDR] [--port N]')
    .option('blobsdir', { alias: 'b', type: 'string', demandOption: true, describe: 'directory holding nydus blob files named by their ids' })
    .option('address', { type: 'string', default: process.env.ROCKET_ADDRESS || '127.0.0.1', describe: 'address to listen on' })
    .option('port', { type: 'number', default: Number(process.env.ROCKET_PORT || 8000), describe: 'port to listen on (0: any free port)' })
    .version(false)
    .parse();
  if (!fs.statSync(args.blobsdir, { throwIfNoEntry: false })?.isDirectory()) throw new NydusError(`--blobsdir ${args.blobsdir} is not a directory`);
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) throw new NydusError(`--port ${args.port} is not a port number`);
  const server = await startBlobProxy(args.blobsdir, args.address, args.port).catch((e: Error) => {
    throw new NydusError(`cannot listen on ${args.address}:${args.port}: ${e.message}`);
  });
  process.stdout.write(`nydus-backend-proxy: serving ${args.blobsdir} on ${server.url}\n`);
  const stop = () => void server.close().then(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
});
