/*
 * The ingest endpoint's spool: Okta deliveries kept on disk until the
 * brokers have every event of them (docs/ingest.md, "The spool").
 *
 * A spooled delivery is its request body as received, in one file of the
 * spool's directory, named by the wall-clock millisecond it was spooled and
 * a sequence (NAME_LEN characters, so names sort oldest first). A file is
 * written under a .tmp name, synced, renamed and the directory synced
 * before hb_spool_put returns: once it has, a crash of the process or the
 * machine leaves the delivery on disk. At open, .tmp files (never answered
 * 200) are deleted and every spooled file is queued to be published again.
 *
 * The directory is this process's alone (an exclusive flock on DIR/.lock):
 * two producers replaying the same files would publish them twice each.
 *
 * Thread-safe: every function may be called from any thread.
 */
#ifndef HB_SPOOL_H
#define HB_SPOOL_H

#include <stddef.h>

#define HB_SPOOL_NAME_LEN 30 /* "%016llx-%08x.okta" */
#define HB_SPOOL_FULL (-2)   /* hb_spool_put: the body does not fit within max_bytes */

typedef struct hb_spool_s hb_spool_t;

/* One spooled delivery: its file's name and size. */
typedef struct {
    char name[HB_SPOOL_NAME_LEN + 1];
    size_t size; /* on the volume: whole 4 KiB blocks */
} hb_spool_file_t;

/* Opens DIR (created, mode 0700, if missing), takes its lock, deletes the
 * .tmp files and queues the spooled ones. NULL with errstr when the
 * directory cannot be made, read or written, or another process holds it. */
hb_spool_t *hb_spool_open(const char *dir, long long max_bytes, char *errstr, size_t errstr_size);
/* Releases the lock; the files stay. */
void hb_spool_close(hb_spool_t *s);

/* Writes body durably and counts it in (*f names it). 0; HB_SPOOL_FULL;
 * -1 with errstr (a write or sync failed: nothing is left of it). */
int hb_spool_put(hb_spool_t *s, const char *body, size_t len, hb_spool_file_t *f, char *errstr,
                 size_t errstr_size);
/* f's events are all acknowledged: its file goes. */
void hb_spool_remove(hb_spool_t *s, const hb_spool_file_t *f);
/* f's events are not all acknowledged: it is queued to be published again. */
void hb_spool_requeue(hb_spool_t *s, const hb_spool_file_t *f);
/* Takes the oldest queued file into *f: 1, or 0 when none is queued. The
 * caller then removes or requeues it. */
int hb_spool_take(hb_spool_t *s, hb_spool_file_t *f);
/* Whether any file is queued. */
int hb_spool_queued(hb_spool_t *s);
/* f's bytes (malloc'd), NULL with errstr and *err: the open's or read's
 * errno (ENOENT: the file is no more; EINVAL: no regular file), or 0 when
 * it changed size while read. */
char *hb_spool_read(hb_spool_t *s, const hb_spool_file_t *f, size_t *len, int *err, char *errstr,
                    size_t errstr_size);
/* f is gone from the directory (deleted by hand): counted out. */
void hb_spool_forget(hb_spool_t *s, const hb_spool_file_t *f);
/* f cannot be published (not an event-hook delivery): renamed NAME.bad,
 * counted out, never queued again. */
void hb_spool_quarantine(hb_spool_t *s, const hb_spool_file_t *f);

/* The files set aside (.bad) that an operator deleted are counted out:
 * their room is back. Looks at most once a second (cheap to call often). */
void hb_spool_recount(hb_spool_t *s);
/* Spooled deliveries (queued or in flight), and the bytes the spool takes on
 * its volume (theirs and the .bad files', in whole 4 KiB blocks); bad_bytes
 * (may be NULL): the .bad files' share of them. */
void hb_spool_usage(hb_spool_t *s, long *files, long long *bytes, long long *bad_bytes);
/* Whether the spool is below its max_bytes, and has not refused a
 * delivery that fits them since a file last went. */
int hb_spool_has_room(hb_spool_t *s);
/* Whether the spool can write: 1, or 0 with why while the last write
 * failed (disk full, read-only, I/O error) and no write of its own (tried
 * once a second, from the caller's thread) has succeeded since. */
int hb_spool_writable(hb_spool_t *s, char *why, size_t why_size);
const char *hb_spool_dir(const hb_spool_t *s);

#endif
