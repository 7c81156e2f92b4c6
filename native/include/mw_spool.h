/*
 * mailwarden native core: the spool's file work for a batch of messages in one call.
 *
 * The spool's syncer threads (core/mailwarden/spool.py) run what waits for the disk: each
 * system call made from Python releases the GIL and takes it back, and under load taking it
 * back means waiting for the event loop to let go of it, a hand-over of two context
 * switches.  One call here runs a whole batch (the fsyncs and renames of new messages, the
 * in-doubt flags' data syncs, the emptying of delivered messages' files and the queue
 * directory's sync) with the GIL released once.
 */
#ifndef MW_SPOOL_H
#define MW_SPOOL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What one operation does with its descriptor and paths. */
#define MW_SPOOL_COMMIT 1   /* fsync(fd), then rename(src, dst) */
#define MW_SPOOL_DATASYNC 2 /* fdatasync(fd) */
#define MW_SPOOL_TRUNCATE 3 /* ftruncate(fd, 0): a delivered message's file emptied for reuse */

/* When the directory is synced after the operations. */
#define MW_SPOOL_DIR_NONE 0      /* never */
#define MW_SPOOL_DIR_IF_COMMIT 1 /* when at least one MW_SPOOL_COMMIT succeeded */
#define MW_SPOOL_DIR_ALWAYS 2    /* in any case (other work of the batch waits for it) */

/* Added to the errno of a commit whose fsync succeeded but whose rename failed. */
#define MW_SPOOL_AT_RENAME 0x10000

/* Runs ops[i] with fds[i], srcs[i], dsts[i] for i < n in order, writing to errs[i] 0 or the
 * errno of the failed call (plus MW_SPOOL_AT_RENAME for a rename); a failed fsync skips the
 * rename.  Then syncs the directory `dir` as `dir_sync` says (open, fsync, close).  Returns
 * 0 when the directory was synced, -1 when it was not to be, else the errno of the sync. */
int mw_spool_batch(size_t n, const int *ops, const int *fds, const char *const *srcs,
                   const char *const *dsts, int *errs, const char *dir, int dir_sync);

#ifdef __cplusplus
}
#endif

#endif
