/* The spool's batched file work: see mw_spool.h. */
#define _POSIX_C_SOURCE 200809L

#include "mw_spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static int sync_dir(const char *dir)
{
    int fd;
    do {
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno;
    int err = fsync(fd) == 0 ? 0 : errno;
    close(fd);
    return err;
}

int mw_spool_batch(size_t n, const int *ops, const int *fds, const char *const *srcs,
                   const char *const *dsts, int *errs, const char *dir, int dir_sync)
{
    int committed = 0;
    for (size_t i = 0; i < n; i++) {
        int err = 0;
        switch (ops[i]) {
        case MW_SPOOL_COMMIT:
            if (fsync(fds[i]) != 0)
                err = errno;
            else if (rename(srcs[i], dsts[i]) != 0)
                err = MW_SPOOL_AT_RENAME + errno;
            else
                committed = 1;
            break;
        case MW_SPOOL_DATASYNC:
            if (fdatasync(fds[i]) != 0)
                err = errno;
            break;
        case MW_SPOOL_TRUNCATE:
            if (ftruncate(fds[i], 0) != 0)
                err = errno;
            break;
        default:
            err = EINVAL;
            break;
        }
        errs[i] = err;
    }
    if (dir == NULL || dir_sync == MW_SPOOL_DIR_NONE ||
        (dir_sync == MW_SPOOL_DIR_IF_COMMIT && !committed))
        return -1;
    return sync_dir(dir);
}
