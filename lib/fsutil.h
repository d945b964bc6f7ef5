/* Files that are never half-written: outputs go to a temporary name, are fsync'd, then
 * renamed over the final name (and the directory fsync'd), so a crash at any moment leaves
 * either the old file or the new one. */
#ifndef WAN_FSUTIL_H
#define WAN_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Write buf to path atomically (path.tmp.<pid> -> fsync -> rename -> fsync dir). */
int wan_write_file_atomic(const char *path, const void *buf, size_t len);
/* Read a whole file (NUL-terminated for convenience; *len excludes the NUL). */
int wan_read_file(const char *path, char **buf, size_t *len);
int wan_mkdir_p(const char *path);           /* like mkdir -p */
int wan_fsync_path(const char *path);        /* fsync a file or directory by name */
int wan_fsync_parent(const char *path);      /* fsync the directory holding path */
int wan_rename_durable(const char *from, const char *to); /* rename + fsync the parent(s) */
int wan_rm_rf(const char *path);             /* remove a tree (for retention and temp dirs) */
bool wan_path_exists(const char *path);
bool wan_is_dir(const char *path);
/* Replace a symlink atomically (a 'latest' pointer): new link under a temp name, rename. */
int wan_symlink_atomic(const char *target, const char *linkpath);
/* pread/pwrite that loop until done; a short read (EOF) is an error naming path. */
int wan_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path);
int wan_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path);
int wan_write_full(int fd, const void *buf, size_t len, const char *path);
/* dirname into buf */
void wan_dirname(const char *path, char *buf, size_t n);
/* join a and b with '/' into buf; returns WAN_ERR_USAGE if it does not fit */
int wan_path_join(char *buf, size_t n, const char *a, const char *b);

#endif
