import { notImplemented } from './not-implemented.ts';

notImplemented('nydusctl');
