/**
 * Makes the cached fixtures that several tests share, once, before they run side by side (two
 * debootstraps into one directory at once would spoil it): the Debian rootfs and its OCI layout.
 *   node --import tsx test/helpers/make-fixtures.ts
 */
import { debianOciImage } from './debian-rootfs.ts';

const { layout, tag } = debianOciImage();
console.log(`fixtures: Debian rootfs and its OCI image ${layout}:${tag}`);
