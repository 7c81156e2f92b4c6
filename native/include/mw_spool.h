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
/* Added to the errno of the directory sync a job of a queue waited for (mw_spool_q). */
#define MW_SPOOL_AT_DIR 0x20000

/* For a queue only: the directory synced after the batch's other work (a removal's record). */
#define MW_SPOOL_DIRSYNC 4

/* Runs ops[i] with fds[i], srcs[i], dsts[i] for i < n in order, writing to errs[i] 0 or the
 * errno of the failed call (plus MW_SPOOL_AT_RENAME for a rename); a failed fsync skips the
 * rename.  Then syncs the directory `dir` as `dir_sync` says (open, fsync, close).  Returns
 * 0 when the directory was synced, -1 when it was not to be, else the errno of the sync. */
int mw_spool_batch(size_t n, const int *ops, const int *fds, const char *const *srcs,
                   const char *const *dsts, int *errs, const char *dir, int dir_sync);

/*
 * A queue of such work with its own threads, which never take the GIL: the event loop
 * submits jobs (one call each, no thread hand-over), a thread takes every job waiting when
 * no other thread is idle (else one, so syncs overlap and the file system commits them
 * together) and runs them as mw_spool_batch does, syncing the directory once when a commit
 * or a MW_SPOOL_DIRSYNC job is among them.  Its completions are kept for
 * mw_spool_q_done() and signalled on an eventfd the loop watches (written only when the
 * list was empty, so one wake-up serves every batch finished meanwhile).
 *
 * Removals (a message file renamed or unlinked out of the directory) are counted here;
 * mw_spool_q_covered() is the number of removals counted before the start of a directory
 * sync that succeeded, so such a removal is on the disk.  Files to empty for reuse go with
 * the next batch, before its directory sync (mw_spool_q_empty_later).
 */
typedef struct mw_spool_q mw_spool_q;
/* Every function below takes a NULL queue (one let go of) as one that does nothing: no job
 * queued (EBADF), nothing counted or done. */

/* A queue for the directory `dir` with up to `threads` threads, each ending after
 * `idle_ms` without work.  NULL when out of memory or descriptors (errno set). */
mw_spool_q *mw_spool_q_new(const char *dir, int threads, int idle_ms);
/* The eventfd readable when completions wait (EFD_NONBLOCK, EFD_CLOEXEC). */
int mw_spool_q_fd(const mw_spool_q *q);
/* Queues `op` (MW_SPOOL_COMMIT, MW_SPOOL_DATASYNC or MW_SPOOL_DIRSYNC) on `fd` (and the
 * paths, copied) as job `id`.  0, or the errno when it cannot be queued (no memory, no
 * thread could be started while none runs). */
int mw_spool_q_submit(mw_spool_q *q, unsigned long long id, int op, int fd, const char *src,
                      const char *dst);
/* Empties `fd` with the next batch (its completion: job `id`, MW_SPOOL_TRUNCATE) and counts
 * a removal; returns the removal's number, 0 when out of memory. */
unsigned long long mw_spool_q_empty_later(mw_spool_q *q, unsigned long long id, int fd);
/* Counts a removal; returns its number. */
unsigned long long mw_spool_q_count_removal(mw_spool_q *q);
/* Removals counted, and of them those a finished directory sync covers. */
unsigned long long mw_spool_q_removals(mw_spool_q *q);
unsigned long long mw_spool_q_covered(mw_spool_q *q);
/* Resets the eventfd and moves up to `cap` completions into ids[]/errs[] (each job's errno
 * as mw_spool_batch gives it, a failed directory sync as MW_SPOOL_AT_DIR + errno); returns
 * how many.  Call again while it fills all `cap`. */
size_t mw_spool_q_done(mw_spool_q *q, unsigned long long *ids, int *errs, size_t cap);
/* Its threads running now. */
int mw_spool_q_threads(mw_spool_q *q);
/* Runs the waiting jobs and empties the waiting files in the calling thread now, with a
 * directory sync (as a MW_SPOOL_DIRSYNC job would); returns its errno (0: synced). */
int mw_spool_q_sync_now(mw_spool_q *q);
/* Lets the queue go: its threads finish the jobs queued and end; freed (the eventfd
 * closed) when the last one has.  `q` must not be used after. */
void mw_spool_q_close(mw_spool_q *q);

#ifdef __cplusplus
}
#endif

#endif
