/* Small file-system helpers shared by every writer that replaces a file
 * atomically (write "<path>.tmp", sync, rename): weight files, dataset
 * caches, images, checkpoints. */
#ifndef DC_FILEIO_H
#define DC_FILEIO_H

/* fsync the folder that holds `path`, so a rename into it is durable. Best
 * effort: the file itself is complete either way. */
void dc_sync_parent(const char *path);

#endif
