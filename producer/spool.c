/*
 * The ingest endpoint's spool (spool.h): one file per delivery in a
 * directory, a queue of the files to publish again, the bytes they hold.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hb_common.h"
#include "hb_log.h"

#define SPOOL_SUFFIX ".okta"
#define SPOOL_TMP ".tmp"
#define SPOOL_BAD ".bad"
/* After a failed write, hb_spool_writable tries one of this size this often. */
#define SPOOL_PROBE_BYTES 4096
#define SPOOL_BLOCK 4096
#define SPOOL_PROBE_EVERY_MS 1000
/* How often hb_spool_recount looks whether the .bad files are still there. */
#define SPOOL_RECOUNT_EVERY_MS 1000

/* A file set aside (.bad): still on the volume, so counted in the bytes,
 * until an operator deletes it. */
typedef struct {
    char *name;
    size_t size;
} spool_bad_t;

struct hb_spool_s {
    char *dir;
    int dfd;  /* the directory, for the *at calls and its syncs */
    int lock; /* DIR/.lock, flocked */
    long long max_bytes;
    pthread_mutex_t mu;
    unsigned seq;
    /* the latest time a name carries: a clock set back does not name a
     * later delivery before an earlier one (published in name order) */
    unsigned long long last_ms;
    long files;             /* spooled: queued or in flight */
    long long bytes;        /* on the volume (spool_disk_size): theirs and the .bad files' */
    hb_spool_file_t *queue; /* to publish again: a min-heap by name (oldest first) */
    size_t qlen, qcap;
    /* the last write failed (disk full, read-only, I/O error): why, and
     * when hb_spool_writable tries a write of its own */
    int failing;
    char failing_why[256];
    int64_t probe_at;
    /* a delivery that fits max_bytes was refused for lack of room, and no
     * file has gone since: no room (hb_spool_has_room) */
    int full;
    spool_bad_t *bad; /* the files set aside, counted in bytes */
    size_t nbad, badcap;
    int64_t recount_at; /* when hb_spool_recount next looks at them */
};

/* What a file of len bytes takes on the volume: whole 4 KiB blocks. An
 * emptyDir's sizeLimit counts blocks, not bytes: counted by their bytes,
 * deliveries of 1 to 2.5 KB would have filled a 1 GiB volume (and had the
 * pod evicted, its spool lost) at 250 to 600 MiB of spool. */
static size_t spool_disk_size(size_t len) {
    return (len + SPOOL_BLOCK - 1) / SPOOL_BLOCK * SPOOL_BLOCK;
}

/* A spooled file is gone (mu held): its bytes are room again. */
static void spool_count_out_locked(hb_spool_t *s, size_t size) {
    s->files--;
    s->bytes -= (long long)size;
    s->full = 0;
}

/* name (set aside, size bytes on the volume) counts in bytes (mu held). */
static void spool_add_bad_locked(hb_spool_t *s, const char *name, size_t size) {
    if (s->nbad == s->badcap) {
        s->badcap = s->badcap ? 2 * s->badcap : 8;
        s->bad = hb_realloc(s->bad, s->badcap * sizeof(*s->bad));
    }
    s->bad[s->nbad].name = hb_strdup(name);
    s->bad[s->nbad].size = size;
    s->nbad++;
    s->bytes += (long long)size;
}

/* A spooled file's name: 16 hex digits, '-', 8 hex digits, ".okta". */
static int spool_name_ok(const char *n) {
    size_t len = strlen(n);
    if (len != HB_SPOOL_NAME_LEN || strcmp(n + 25, SPOOL_SUFFIX) != 0 || n[16] != '-')
        return 0;
    for (size_t i = 0; i < 25; i++)
        if (i != 16 && !strchr("0123456789abcdef", n[i]))
            return 0;
    return 1;
}

static int spool_has_suffix(const char *n, const char *suffix) {
    size_t len = strlen(n), sl = strlen(suffix);
    return len > sl && !strcmp(n + len - sl, suffix);
}

/* The queue is a binary min-heap by name: queueing and taking cost
 * log(files). (A sorted array cost a memmove of the whole queue per file:
 * 80,000 files found at start held the start for 6 to 7 s, review 42.) */
static int spool_before(const hb_spool_file_t *a, const hb_spool_file_t *b) {
    return strcmp(a->name, b->name) < 0;
}

/* Queues f (mu held). */
static void spool_enqueue_locked(hb_spool_t *s, const hb_spool_file_t *f) {
    size_t at = s->qlen;
    if (s->qlen == s->qcap) {
        s->qcap = s->qcap ? 2 * s->qcap : 16;
        s->queue = hb_realloc(s->queue, s->qcap * sizeof(*s->queue));
    }
    while (at > 0 && spool_before(f, &s->queue[(at - 1) / 2])) {
        s->queue[at] = s->queue[(at - 1) / 2];
        at = (at - 1) / 2;
    }
    s->queue[at] = *f;
    s->qlen++;
}

/* Takes the oldest queued file into *f (mu held, qlen > 0). */
static void spool_dequeue_locked(hb_spool_t *s, hb_spool_file_t *f) {
    hb_spool_file_t last;
    size_t at = 0;
    *f = s->queue[0];
    last = s->queue[--s->qlen];
    for (;;) {
        size_t child = 2 * at + 1;
        if (child >= s->qlen)
            break;
        if (child + 1 < s->qlen && spool_before(&s->queue[child + 1], &s->queue[child]))
            child++;
        if (!spool_before(&s->queue[child], &last))
            break;
        s->queue[at] = s->queue[child];
        at = child;
    }
    s->queue[at] = last;
}

/* Reads the directory: deletes .tmp files, queues spooled ones, and starts
 * the sequence past every name found (a clock set back cannot reuse one). */
static int spool_scan(hb_spool_t *s, char *errstr, size_t errstr_size) {
    int fd = openat(s->dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *e;
    if (!d) {
        hb_seterr(errstr, errstr_size, "ingest spool %s: cannot read it: %s", s->dir,
                  strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    while ((e = readdir(d))) {
        struct stat st;
        hb_spool_file_t f;
        if (spool_has_suffix(e->d_name, SPOOL_TMP)) {
            if (unlinkat(s->dfd, e->d_name, 0) == 0)
                hb_info("ingest spool: deleted %s/%s (written when the process stopped, never "
                        "answered 200)",
                        s->dir, e->d_name);
            continue;
        }
        if (fstatat(s->dfd, e->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (spool_has_suffix(e->d_name, SPOOL_BAD)) { /* set aside, still on the volume */
            spool_add_bad_locked(s, e->d_name, spool_disk_size((size_t)st.st_size));
            continue;
        }
        if (!spool_name_ok(e->d_name)) {
            if (spool_has_suffix(e->d_name, SPOOL_SUFFIX))
                hb_warn("ingest spool: %s/%s is not named as a spooled delivery is "
                        "(<16 hex digits>-<8 hex digits>.okta): left alone, not published",
                        s->dir, e->d_name);
            continue;
        }
        memset(&f, 0, sizeof(f));
        memcpy(f.name, e->d_name, HB_SPOOL_NAME_LEN);
        f.size = spool_disk_size((size_t)st.st_size);
        spool_enqueue_locked(s, &f);
        s->files++;
        s->bytes += (long long)f.size;
        unsigned seq = (unsigned)strtoul(e->d_name + 17, NULL, 16);
        unsigned long long ms = strtoull(e->d_name, NULL, 16);
        if (seq >= s->seq)
            s->seq = seq + 1;
        if (ms > s->last_ms)
            s->last_ms = ms;
    }
    closedir(d);
    return 0;
}

hb_spool_t *hb_spool_open(const char *dir, long long max_bytes, char *errstr, size_t errstr_size) {
    hb_spool_t *s = hb_calloc(1, sizeof(*s));
    s->dir = hb_strdup(dir);
    s->dfd = s->lock = -1;
    s->max_bytes = max_bytes;
    pthread_mutex_init(&s->mu, NULL);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        hb_seterr(errstr, errstr_size, "ingest spool %s: cannot create it: %s", dir,
                  strerror(errno));
        goto fail;
    }
    s->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dfd < 0) {
        hb_seterr(errstr, errstr_size, "ingest spool %s: cannot open it: %s", dir, strerror(errno));
        goto fail;
    }
    s->lock = openat(s->dfd, ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock < 0) {
        hb_seterr(errstr, errstr_size, "ingest spool %s: cannot write in it: %s", dir,
                  strerror(errno));
        goto fail;
    }
    if (flock(s->lock, LOCK_EX | LOCK_NB) < 0) {
        hb_seterr(errstr, errstr_size,
                  "ingest spool %s is in use by another process (%s holds its .lock): each "
                  "producer needs a directory of its own",
                  dir, errno == EWOULDBLOCK ? "another hookbridge-producer" : strerror(errno));
        goto fail;
    }
    if (spool_scan(s, errstr, errstr_size) < 0)
        goto fail;
    return s;
fail:
    hb_spool_close(s);
    return NULL;
}

void hb_spool_close(hb_spool_t *s) {
    if (!s)
        return;
    if (s->lock >= 0)
        close(s->lock); /* and its flock */
    if (s->dfd >= 0)
        close(s->dfd);
    pthread_mutex_destroy(&s->mu);
    for (size_t i = 0; i < s->nbad; i++)
        free(s->bad[i].name);
    free(s->bad);
    free(s->queue);
    free(s->dir);
    free(s);
}

static int spool_write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int hb_spool_put(hb_spool_t *s, const char *body, size_t len, hb_spool_file_t *f, char *errstr,
                 size_t errstr_size) {
    char tmp[HB_SPOOL_NAME_LEN + 8];
    struct timespec now;
    unsigned long long ms;
    unsigned seq;
    int fd, err;
    size_t disk = spool_disk_size(len);
    clock_gettime(CLOCK_REALTIME, &now);
    ms = (unsigned long long)now.tv_sec * 1000ULL + (unsigned long long)now.tv_nsec / 1000000;
    pthread_mutex_lock(&s->mu);
    if (s->bytes + (long long)disk > s->max_bytes) {
        /* not ready until a file goes: the next delivery would not fit
         * either (review 42: /readyz 200 with every delivery refused) */
        if ((long long)disk <= s->max_bytes)
            s->full = 1;
        pthread_mutex_unlock(&s->mu);
        return HB_SPOOL_FULL;
    }
    s->bytes += (long long)disk; /* held while written, so parallel puts cannot overfill */
    s->files++;
    seq = s->seq++;
    if (ms < s->last_ms)
        ms = s->last_ms;
    s->last_ms = ms;
    pthread_mutex_unlock(&s->mu);

    memset(f, 0, sizeof(*f));
    snprintf(f->name, sizeof(f->name), "%016llx-%08x" SPOOL_SUFFIX, ms, seq);
    f->size = disk;
    snprintf(tmp, sizeof(tmp), "%.25s" SPOOL_TMP, f->name);
    fd = openat(s->dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        err = errno;
        goto fail;
    }
    if (spool_write_all(fd, body, len) < 0 || fdatasync(fd) < 0) {
        err = errno ? errno : EIO;
        close(fd);
        unlinkat(s->dfd, tmp, 0);
        goto fail;
    }
    if (close(fd) < 0 || renameat(s->dfd, tmp, s->dfd, f->name) < 0) {
        err = errno;
        unlinkat(s->dfd, tmp, 0);
        goto fail;
    }
    /* the new name itself must survive a crash of the machine */
    if (fsync(s->dfd) < 0) {
        err = errno;
        unlinkat(s->dfd, f->name, 0);
        goto fail;
    }
    pthread_mutex_lock(&s->mu);
    s->failing = 0;
    pthread_mutex_unlock(&s->mu);
    return 0;
fail:
    hb_seterr(errstr, errstr_size, "ingest spool %s: cannot write %s: %s", s->dir, tmp,
              strerror(err));
    pthread_mutex_lock(&s->mu);
    s->bytes -= (long long)disk;
    s->files--;
    if (!s->failing)
        s->probe_at = hb_mono_ms() + SPOOL_PROBE_EVERY_MS;
    s->failing = 1;
    snprintf(s->failing_why, sizeof(s->failing_why), "%s", strerror(err));
    pthread_mutex_unlock(&s->mu);
    return -1;
}

/* A write as a delivery's (a .tmp file, synced, deleted): 0, or errno. */
static int spool_probe(hb_spool_t *s) {
    static const char page[SPOOL_PROBE_BYTES];
    int fd = openat(s->dfd, "probe" SPOOL_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int err = 0;
    if (fd < 0)
        return errno;
    if (spool_write_all(fd, page, sizeof(page)) < 0 || fdatasync(fd) < 0)
        err = errno ? errno : EIO;
    close(fd);
    unlinkat(s->dfd, "probe" SPOOL_TMP, 0);
    return err;
}

int hb_spool_writable(hb_spool_t *s, char *why, size_t why_size) {
    int failing, probe, err;
    pthread_mutex_lock(&s->mu);
    failing = s->failing;
    probe = failing && hb_mono_ms() >= s->probe_at;
    if (probe)
        s->probe_at = hb_mono_ms() + SPOOL_PROBE_EVERY_MS;
    pthread_mutex_unlock(&s->mu);
    if (!failing)
        return 1;
    if (probe && (err = spool_probe(s)) == 0) {
        pthread_mutex_lock(&s->mu);
        s->failing = 0;
        pthread_mutex_unlock(&s->mu);
        return 1;
    }
    pthread_mutex_lock(&s->mu);
    if (probe)
        snprintf(s->failing_why, sizeof(s->failing_why), "%s", strerror(err));
    hb_seterr(why, why_size, "the ingest spool %s cannot write (%s)", s->dir, s->failing_why);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void hb_spool_remove(hb_spool_t *s, const hb_spool_file_t *f) {
    /* not synced: should the removal be lost in a crash, the delivery is
     * published again, which at least once allows */
    if (unlinkat(s->dfd, f->name, 0) < 0 && errno != ENOENT)
        hb_warn("ingest spool %s: cannot delete %s (published: it will be published again "
                "at the next start): %s",
                s->dir, f->name, strerror(errno));
    pthread_mutex_lock(&s->mu);
    spool_count_out_locked(s, f->size);
    pthread_mutex_unlock(&s->mu);
}

void hb_spool_requeue(hb_spool_t *s, const hb_spool_file_t *f) {
    pthread_mutex_lock(&s->mu);
    spool_enqueue_locked(s, f);
    pthread_mutex_unlock(&s->mu);
}

int hb_spool_queued(hb_spool_t *s) {
    int queued;
    pthread_mutex_lock(&s->mu);
    queued = s->qlen > 0;
    pthread_mutex_unlock(&s->mu);
    return queued;
}

int hb_spool_take(hb_spool_t *s, hb_spool_file_t *f) {
    int got = 0;
    pthread_mutex_lock(&s->mu);
    if (s->qlen) {
        spool_dequeue_locked(s, f);
        got = 1;
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

char *hb_spool_read(hb_spool_t *s, const hb_spool_file_t *f, size_t *len, int *err, char *errstr,
                    size_t errstr_size) {
    int fd = openat(s->dfd, f->name, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf;
    size_t got = 0;
    *err = 0;
    if (fd < 0 || fstat(fd, &st) < 0) {
        *err = errno;
        hb_seterr(errstr, errstr_size, "cannot read %s/%s: %s", s->dir, f->name, strerror(*err));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) { /* replaced by hand (a directory...) */
        *err = EINVAL;
        hb_seterr(errstr, errstr_size, "cannot read %s/%s: not a regular file", s->dir, f->name);
        close(fd);
        return NULL;
    }
    buf = hb_malloc((size_t)st.st_size + 1);
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            *err = errno;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != (size_t)st.st_size) {
        if (*err)
            hb_seterr(errstr, errstr_size, "cannot read %s/%s: %s", s->dir, f->name,
                      strerror(*err));
        else
            hb_seterr(errstr, errstr_size, "cannot read %s/%s: short read", s->dir, f->name);
        free(buf);
        return NULL;
    }
    buf[got] = '\0';
    *len = got;
    return buf;
}

void hb_spool_forget(hb_spool_t *s, const hb_spool_file_t *f) {
    pthread_mutex_lock(&s->mu);
    spool_count_out_locked(s, f->size);
    pthread_mutex_unlock(&s->mu);
}

void hb_spool_quarantine(hb_spool_t *s, const hb_spool_file_t *f) {
    char bad[HB_SPOOL_NAME_LEN + 8];
    int renamed;
    snprintf(bad, sizeof(bad), "%s" SPOOL_BAD, f->name);
    renamed = renameat(s->dfd, f->name, s->dfd, bad) == 0;
    if (!renamed)
        hb_warn("ingest spool %s: cannot rename %s to %s: %s", s->dir, f->name, bad,
                strerror(errno));
    pthread_mutex_lock(&s->mu);
    s->files--;
    s->bytes -= (long long)f->size; /* counted again as set aside: still on the volume */
    spool_add_bad_locked(s, renamed ? bad : f->name, f->size);
    pthread_mutex_unlock(&s->mu);
}

void hb_spool_recount(hb_spool_t *s) {
    int64_t now = hb_mono_ms();
    pthread_mutex_lock(&s->mu);
    if (now >= s->recount_at) {
        s->recount_at = now + SPOOL_RECOUNT_EVERY_MS;
        for (size_t i = 0; i < s->nbad;) {
            struct stat st;
            if (fstatat(s->dfd, s->bad[i].name, &st, 0) == 0 || errno != ENOENT) {
                i++;
                continue;
            }
            s->bytes -= (long long)s->bad[i].size; /* deleted: its room is back */
            s->full = 0;
            free(s->bad[i].name);
            s->bad[i] = s->bad[--s->nbad];
        }
    }
    pthread_mutex_unlock(&s->mu);
}

void hb_spool_usage(hb_spool_t *s, long *files, long long *bytes, long long *bad_bytes) {
    pthread_mutex_lock(&s->mu);
    *files = s->files;
    *bytes = s->bytes;
    if (bad_bytes) {
        *bad_bytes = 0;
        for (size_t i = 0; i < s->nbad; i++)
            *bad_bytes += (long long)s->bad[i].size;
    }
    pthread_mutex_unlock(&s->mu);
}

int hb_spool_has_room(hb_spool_t *s) {
    int room;
    pthread_mutex_lock(&s->mu);
    room = s->bytes < s->max_bytes && !s->full;
    pthread_mutex_unlock(&s->mu);
    return room;
}

const char *hb_spool_dir(const hb_spool_t *s) {
    return s->dir;
}
