/* The spool's batched file work: see mw_spool.h. */
#define _POSIX_C_SOURCE 200809L

#include "mw_spool.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
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

/* ---- the queue with its own threads (mw_spool_q) ---------------------------------------- */

struct job {
    unsigned long long id;
    int op;
    int fd;
    char *src;
    char *dst;
};

struct done {
    unsigned long long id;
    int err;
};

struct list {
    void *items;
    size_t n, cap, size;
};

struct mw_spool_q {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct list jobs;     /* struct job: submitted, not yet taken */
    struct list emptying; /* struct job: files to empty with the next batch */
    struct list done;     /* struct done: finished, for mw_spool_q_done */
    char *dir;
    int efd;
    int max_threads, threads, idle, idle_ms;
    int closed;
    unsigned long long removals, covered;
};

static int list_push(struct list *l, const void *item)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *grown = realloc(l->items, cap * l->size);
        if (grown == NULL)
            return ENOMEM;
        l->items = grown;
        l->cap = cap;
    }
    memcpy((char *)l->items + l->n * l->size, item, l->size);
    l->n++;
    return 0;
}

static void job_free(struct job *j)
{
    free(j->src);
    free(j->dst);
}

static void q_free(mw_spool_q *q)
{
    struct job *jobs = q->jobs.items;
    for (size_t i = 0; i < q->jobs.n; i++)
        job_free(&jobs[i]);
    free(q->jobs.items);
    free(q->emptying.items);
    free(q->done.items);
    free(q->dir);
    if (q->efd >= 0)
        close(q->efd);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

mw_spool_q *mw_spool_q_new(const char *dir, int threads, int idle_ms)
{
    mw_spool_q *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    q->jobs.size = q->emptying.size = sizeof(struct job);
    q->done.size = sizeof(struct done);
    q->max_threads = threads > 0 ? threads : 1;
    q->idle_ms = idle_ms > 0 ? idle_ms : 1;
    q->dir = strdup(dir);
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_condattr_t attr;
    int ok = q->dir != NULL && q->efd >= 0 && pthread_condattr_init(&attr) == 0;
    if (ok) {
        /* Idle timeouts on the monotonic clock: a wall clock set back must not keep them. */
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        ok = pthread_cond_init(&q->cv, &attr) == 0;
        pthread_condattr_destroy(&attr);
    }
    if (!ok || pthread_mutex_init(&q->mu, NULL) != 0) {
        int err = errno;
        if (ok)
            pthread_cond_destroy(&q->cv);
        if (q->efd >= 0)
            close(q->efd);
        free(q->dir);
        free(q);
        errno = err ? err : ENOMEM;
        return NULL;
    }
    return q;
}

int mw_spool_q_fd(const mw_spool_q *q) { return q == NULL ? -1 : q->efd; }

static void signal_done(mw_spool_q *q)
{
    uint64_t one = 1;
    /* EAGAIN: the counter is full, so the loop is woken anyway. */
    while (write(q->efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/* Runs the taken jobs and files to empty; the lock is not held.  Returns whether the
 * directory was synced, and the jobs' outcomes in errs (jobs first, then the files). */
static int run_batch(mw_spool_q *q, struct job *jobs, size_t n, struct job *files,
                     size_t nfiles, int *errs, int force_sync)
{
    int wants_dir = force_sync, committed = 0;
    for (size_t i = 0; i < n; i++) {
        int err = 0;
        switch (jobs[i].op) {
        case MW_SPOOL_COMMIT:
            if (fsync(jobs[i].fd) != 0)
                err = errno;
            else if (rename(jobs[i].src, jobs[i].dst) != 0)
                err = MW_SPOOL_AT_RENAME + errno;
            else
                committed = 1;
            break;
        case MW_SPOOL_DATASYNC:
            if (fdatasync(jobs[i].fd) != 0)
                err = errno;
            break;
        case MW_SPOOL_DIRSYNC:
            wants_dir = 1;
            break;
        default:
            err = EINVAL;
            break;
        }
        errs[i] = err;
    }
    /* Emptied before the directory sync that records their removal: a file is reused only
     * once both are done. */
    for (size_t i = 0; i < nfiles; i++)
        errs[n + i] = ftruncate(files[i].fd, 0) == 0 ? 0 : errno;
    if (!(wants_dir || committed))
        return -1;
    int err = sync_dir(q->dir);
    for (size_t i = 0; i < n; i++) {
        int op = jobs[i].op;
        if (err && errs[i] == 0 && (op == MW_SPOOL_COMMIT || op == MW_SPOOL_DIRSYNC))
            errs[i] = MW_SPOOL_AT_DIR + err;
    }
    return err;
}

/* Moves what the batch took to the done list and updates the coverage; under the lock. */
static int finish_batch(mw_spool_q *q, const struct job *jobs, size_t n, const struct job *files,
                        size_t nfiles, const int *errs, int dir_err, unsigned long long removals)
{
    int was_empty = q->done.n == 0;
    if (dir_err == 0 && removals > q->covered)
        q->covered = removals;
    for (size_t i = 0; i < n + nfiles; i++) {
        const struct job *j = i < n ? &jobs[i] : &files[i - n];
        struct done d = {j->id, errs[i]};
        /* Out of memory: the job's waiter is never woken, the lesser harm than a wrong
         * answer (its fsync ran; the client times out and sends the message again). */
        (void)list_push(&q->done, &d);
    }
    return was_empty && q->done.n > 0;
}

/* Takes the waiting jobs (all, or the first when `one`) and every file to empty; under the
 * lock.  The caller frees *jobs, *files and their paths. */
static int take(mw_spool_q *q, int one, struct job **jobs, size_t *n, struct job **files,
                size_t *nfiles, unsigned long long *removals)
{
    size_t k = one && q->jobs.n > 1 ? 1 : q->jobs.n;
    *jobs = NULL;
    *files = NULL;
    *n = *nfiles = 0;
    if (k) {
        *jobs = malloc(k * sizeof **jobs);
        if (*jobs == NULL)
            return ENOMEM;
        memcpy(*jobs, q->jobs.items, k * sizeof **jobs);
        memmove(q->jobs.items, (struct job *)q->jobs.items + k,
                (q->jobs.n - k) * sizeof(struct job));
        q->jobs.n -= k;
        *n = k;
    }
    if (q->emptying.n) {
        *files = q->emptying.items;
        *nfiles = q->emptying.n;
        q->emptying.items = NULL;
        q->emptying.n = q->emptying.cap = 0;
    }
    /* Every removal counted now was made before the coming directory sync starts, and its
     * file (queued before it was counted) is emptied by this batch or an earlier one. */
    *removals = q->removals;
    return 0;
}

static void run_taken(mw_spool_q *q, int force_sync, struct job *jobs, size_t n,
                      struct job *files, size_t nfiles, unsigned long long removals,
                      int *dir_err)
{
    int stack_errs[64];
    int *errs = n + nfiles <= 64 ? stack_errs : malloc((n + nfiles) * sizeof *errs);
    int err = -1;
    if (errs != NULL)
        err = run_batch(q, jobs, n, files, nfiles, errs, force_sync);
    pthread_mutex_lock(&q->mu);
    int wake = errs != NULL && finish_batch(q, jobs, n, files, nfiles, errs, err, removals);
    pthread_mutex_unlock(&q->mu);
    if (wake)
        signal_done(q);
    if (dir_err != NULL)
        *dir_err = errs == NULL ? ENOMEM : err;
    if (errs != stack_errs)
        free(errs);
    for (size_t i = 0; i < n; i++)
        job_free(&jobs[i]);
    free(jobs);
    free(files);
}

static void *worker(void *arg)
{
    mw_spool_q *q = arg;
    /* Named for ps, top and perf (Python's own threads all show as "python"). */
    prctl(PR_SET_NAME, "mw-spool-sync", 0, 0, 0);
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (q->jobs.n == 0) {
            if (q->closed)
                break;
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += q->idle_ms / 1000;
            until.tv_nsec += (long)(q->idle_ms % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            q->idle++;
            int timed_out = 0;
            while (q->jobs.n == 0 && !q->closed && !timed_out)
                timed_out = pthread_cond_timedwait(&q->cv, &q->mu, &until) == ETIMEDOUT;
            q->idle--;
            if (q->jobs.n == 0)
                break; /* idle too long, or let go of */
        }
        struct job *jobs, *files;
        size_t n, nfiles;
        unsigned long long removals;
        /* More than one job only while no other thread waits for work: an idle one syncs in
         * parallel, which the file system commits together. */
        if (take(q, q->idle > 0, &jobs, &n, &files, &nfiles, &removals) != 0) {
            pthread_mutex_unlock(&q->mu);
            struct timespec pause = {0, 1000000L};
            nanosleep(&pause, NULL);
            pthread_mutex_lock(&q->mu);
            continue;
        }
        pthread_mutex_unlock(&q->mu);
        run_taken(q, 0, jobs, n, files, nfiles, removals, NULL);
        pthread_mutex_lock(&q->mu);
    }
    q->threads--;
    int last = q->closed && q->threads == 0;
    pthread_mutex_unlock(&q->mu);
    if (last)
        q_free(q);
    return NULL;
}

/* Starts a thread; under the lock.  Its signals are blocked: the process's handlers run in
 * its own threads, and no system call here is cut short by one. */
static int start_thread(mw_spool_q *q)
{
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &before);
    pthread_attr_t attr;
    int err = pthread_attr_init(&attr);
    if (err == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        pthread_t thread;
        err = pthread_create(&thread, &attr, worker, q);
        pthread_attr_destroy(&attr);
    }
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    if (err == 0)
        q->threads++;
    return err;
}

int mw_spool_q_submit(mw_spool_q *q, unsigned long long id, int op, int fd, const char *src,
                      const char *dst)
{
    if (q == NULL)
        return EBADF;
    struct job j = {id, op, fd, NULL, NULL};
    if ((src != NULL && (j.src = strdup(src)) == NULL) ||
        (dst != NULL && (j.dst = strdup(dst)) == NULL)) {
        job_free(&j);
        return ENOMEM;
    }
    pthread_mutex_lock(&q->mu);
    int err = list_push(&q->jobs, &j);
    if (err == 0) {
        if (q->idle > 0) {
            pthread_cond_signal(&q->cv);
        } else if (q->threads < q->max_threads) {
            /* A failed start while others run: they take the job. */
            int started = start_thread(q);
            if (started != 0 && q->threads == 0) {
                q->jobs.n--;
                err = started;
            }
        }
    }
    pthread_mutex_unlock(&q->mu);
    if (err)
        job_free(&j);
    return err;
}

unsigned long long mw_spool_q_empty_later(mw_spool_q *q, unsigned long long id, int fd)
{
    if (q == NULL)
        return 0;
    struct job j = {id, MW_SPOOL_TRUNCATE, fd, NULL, NULL};
    unsigned long long removal = 0;
    pthread_mutex_lock(&q->mu);
    if (list_push(&q->emptying, &j) == 0)
        removal = ++q->removals;
    pthread_mutex_unlock(&q->mu);
    return removal;
}

/* A counter of the queue read (and with `add` 1, incremented first) under its lock. */
static unsigned long long counter(mw_spool_q *q, unsigned long long *value, int add)
{
    pthread_mutex_lock(&q->mu);
    unsigned long long now = *value += (unsigned long long)add;
    pthread_mutex_unlock(&q->mu);
    return now;
}

unsigned long long mw_spool_q_count_removal(mw_spool_q *q)
{
    return q == NULL ? 0 : counter(q, &q->removals, 1);
}

unsigned long long mw_spool_q_removals(mw_spool_q *q)
{
    return q == NULL ? 0 : counter(q, &q->removals, 0);
}

unsigned long long mw_spool_q_covered(mw_spool_q *q)
{
    return q == NULL ? 0 : counter(q, &q->covered, 0);
}

size_t mw_spool_q_done(mw_spool_q *q, unsigned long long *ids, int *errs, size_t cap)
{
    if (q == NULL)
        return 0;
    uint64_t count;
    /* Reset first: a completion added after the read below signals again. */
    while (read(q->efd, &count, sizeof count) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&q->mu);
    size_t n = q->done.n < cap ? q->done.n : cap;
    struct done *items = q->done.items;
    for (size_t i = 0; i < n; i++) {
        ids[i] = items[i].id;
        errs[i] = items[i].err;
    }
    memmove(items, items + n, (q->done.n - n) * sizeof *items);
    q->done.n -= n;
    pthread_mutex_unlock(&q->mu);
    return n;
}

int mw_spool_q_threads(mw_spool_q *q)
{
    if (q == NULL)
        return 0;
    pthread_mutex_lock(&q->mu);
    int threads = q->threads;
    pthread_mutex_unlock(&q->mu);
    return threads;
}

int mw_spool_q_sync_now(mw_spool_q *q)
{
    if (q == NULL)
        return EBADF;
    struct job *jobs, *files;
    size_t n, nfiles;
    unsigned long long removals;
    pthread_mutex_lock(&q->mu);
    int err = take(q, 0, &jobs, &n, &files, &nfiles, &removals);
    pthread_mutex_unlock(&q->mu);
    if (err)
        return err;
    run_taken(q, 1, jobs, n, files, nfiles, removals, &err);
    return err;
}

void mw_spool_q_close(mw_spool_q *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cv);
    int none = q->threads == 0;
    pthread_mutex_unlock(&q->mu);
    if (none)
        q_free(q);
}
