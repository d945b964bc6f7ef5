#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "error.h"

void wan_dirname(const char *path, char *buf, size_t n) {
    snprintf(buf, n, "%s", path);
    char *s = strrchr(buf, '/');
    if (!s) snprintf(buf, n, ".");
    else if (s == buf) buf[1] = 0;
    else *s = 0;
}

int wan_path_join(char *buf, size_t n, const char *a, const char *b) {
    int w = snprintf(buf, n, "%s%s%s", a, (a[0] && a[strlen(a) - 1] != '/') ? "/" : "", b);
    if (w < 0 || (size_t)w >= n) return wan_fail(WAN_ERR_USAGE, "path too long: %s/%s", a, b);
    return 0;
}

int wan_write_full(int fd, const void *buf, size_t len, const char *path) {
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return wan_fail_errno(WAN_ERR_RUNTIME, "write %s", path);
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int wan_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path) {
    const char *p = buf;
    while (len) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return wan_fail_errno(WAN_ERR_RUNTIME, "write %s at offset %llu", path, (unsigned long long)off);
        }
        p += w;
        off += (uint64_t)w;
        len -= (size_t)w;
    }
    return 0;
}

int wan_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path) {
    char *p = buf;
    while (len) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return wan_fail_errno(WAN_ERR_RUNTIME, "read %s at offset %llu", path, (unsigned long long)off);
        }
        if (r == 0)
            return wan_fail(WAN_ERR_RUNTIME, "%s: truncated: expected %zu more bytes at offset %llu", path, len,
                            (unsigned long long)off);
        p += r;
        off += (uint64_t)r;
        len -= (size_t)r;
    }
    return 0;
}

int wan_fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "open %s", path);
    int rc = 0;
    if (fsync(fd) < 0 && errno != EINVAL) rc = wan_fail_errno(WAN_ERR_RUNTIME, "fsync %s", path);
    close(fd);
    return rc;
}

int wan_fsync_parent(const char *path) {
    char dir[WAN_PATH_MAX];
    wan_dirname(path, dir, sizeof dir);
    return wan_fsync_path(dir);
}

int wan_rename_durable(const char *from, const char *to) {
    if (rename(from, to) < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "rename %s -> %s", from, to);
    WAN_TRY(wan_fsync_parent(to));
    char a[WAN_PATH_MAX], b[WAN_PATH_MAX];
    wan_dirname(from, a, sizeof a);
    wan_dirname(to, b, sizeof b);
    if (strcmp(a, b)) WAN_TRY(wan_fsync_path(a));
    return 0;
}

int wan_write_file_atomic(const char *path, const void *buf, size_t len) {
    char tmp[WAN_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "create %s", tmp);
    int rc = wan_write_full(fd, buf, len, tmp);
    if (!rc && fsync(fd) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "fsync %s", tmp);
    if (close(fd) < 0 && !rc) rc = wan_fail_errno(WAN_ERR_RUNTIME, "close %s", tmp);
    if (!rc) rc = wan_rename_durable(tmp, path);
    if (rc) unlink(tmp);
    return rc;
}

int wan_read_file(const char *path, char **buf, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "open %s", path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return wan_fail_errno(WAN_ERR_RUNTIME, "stat %s", path);
    }
    size_t n = (size_t)st.st_size;
    char *b = malloc(n + 1);
    if (!b) {
        close(fd);
        return wan_fail(WAN_ERR_RUNTIME, "out of memory reading %s (%zu bytes)", path, n);
    }
    int rc = wan_pread_full(fd, b, n, 0, path);
    close(fd);
    if (rc) {
        free(b);
        return rc;
    }
    b[n] = 0;
    *buf = b;
    if (len) *len = n;
    return 0;
}

int wan_mkdir_p(const char *path) {
    char buf[WAN_PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return wan_fail(WAN_ERR_USAGE, "path too long: %s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return wan_fail_errno(WAN_ERR_RUNTIME, "mkdir %s", buf);
        *p = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST) return wan_fail_errno(WAN_ERR_RUNTIME, "mkdir %s", buf);
    if (!wan_is_dir(buf)) return wan_fail(WAN_ERR_RUNTIME, "%s exists and is not a directory", buf);
    return 0;
}

bool wan_path_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

bool wan_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int wan_rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : wan_fail_errno(WAN_ERR_RUNTIME, "stat %s", path);
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return wan_fail_errno(WAN_ERR_RUNTIME, "opendir %s", path);
        struct dirent *e;
        int rc = 0;
        while (!rc && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[WAN_PATH_MAX];
            rc = wan_path_join(sub, sizeof sub, path, e->d_name);
            if (!rc) rc = wan_rm_rf(sub);
        }
        closedir(d);
        if (rc) return rc;
        if (rmdir(path) < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "rmdir %s", path);
        return 0;
    }
    if (unlink(path) < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "unlink %s", path);
    return 0;
}

int wan_symlink_atomic(const char *target, const char *linkpath) {
    char tmp[WAN_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", linkpath, (int)getpid());
    unlink(tmp);
    if (symlink(target, tmp) < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "symlink %s -> %s", tmp, target);
    return wan_rename_durable(tmp, linkpath);
}
