/*
 * Offset tracker.
 *
 * Each partition keeps a ring of (offset, done) entries in consumption order,
 * addressed by a sequence number that only grows (entry seq lives at ring
 * index seq - base_seq). done() marks an entry; then finished entries are
 * popped from the head and the committable position becomes the popped
 * offset + 1. A partition that is forgotten while messages are outstanding is
 * only marked revoked and unlinked; it is freed when its last outstanding
 * message is done, so a late done() never touches freed memory.
 */
#include "hb_offsets.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry_s {
    int64_t offset;
    int done;
} entry_t;

struct hb_offpart_s {
    struct hb_offpart_s *next;
    char *topic;
    int32_t partition;
    int revoked;
    entry_t *ring;
    size_t cap, head, cnt; /* ring storage */
    uint64_t base_seq;     /* seq of ring[head] */
    size_t undone;
    int64_t position; /* next offset to consume; -1 unknown */
    int64_t reported; /* last position collected */
};

struct hb_offsets_s {
    hb_offpart_t *parts;
    hb_offpart_t *revoked; /* forgotten while work was unfinished */
    size_t pending;
};

hb_offsets_t *hb_offsets_new(void) {
    return hb_calloc(1, sizeof(hb_offsets_t));
}

static void part_free(hb_offpart_t *p) {
    free(p->topic);
    free(p->ring);
    free(p);
}

void hb_offsets_free(hb_offsets_t *o) {
    if (!o)
        return;
    while (o->parts) {
        hb_offpart_t *p = o->parts;
        o->parts = p->next;
        part_free(p);
    }
    while (o->revoked) { /* revoked with work abandoned at shutdown */
        hb_offpart_t *p = o->revoked;
        o->revoked = p->next;
        part_free(p);
    }
    free(o);
}

static hb_offpart_t *part_get(hb_offsets_t *o, const char *topic, int32_t partition, int create) {
    hb_offpart_t *p;
    for (p = o->parts; p; p = p->next)
        if (p->partition == partition && !strcmp(p->topic, topic))
            return p;
    if (!create)
        return NULL;
    p = hb_calloc(1, sizeof(*p));
    p->topic = hb_strdup(topic);
    p->partition = partition;
    p->position = p->reported = -1;
    p->next = o->parts;
    o->parts = p;
    return p;
}

hb_offref_t hb_offsets_track(hb_offsets_t *o, const char *topic, int32_t partition,
                             int64_t offset) {
    hb_offpart_t *p = part_get(o, topic, partition, 1);
    hb_offref_t ref;
    if (p->cnt == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 64;
        entry_t *nr = hb_malloc(ncap * sizeof(entry_t));
        for (size_t i = 0; i < p->cnt; i++)
            nr[i] = p->ring[(p->head + i) % p->cap];
        free(p->ring);
        p->ring = nr;
        p->cap = ncap;
        p->head = 0;
    }
    p->ring[(p->head + p->cnt) % p->cap] = (entry_t){offset, 0};
    ref.part = p;
    ref.seq = p->base_seq + p->cnt;
    p->cnt++;
    p->undone++;
    o->pending++;
    return ref;
}

void hb_offsets_done(hb_offsets_t *o, hb_offref_t ref) {
    hb_offpart_t *p = ref.part;
    entry_t *e;
    if (!p || ref.seq < p->base_seq || ref.seq >= p->base_seq + p->cnt)
        return;
    e = &p->ring[(p->head + (ref.seq - p->base_seq)) % p->cap];
    if (e->done)
        return;
    e->done = 1;
    p->undone--;
    if (p->revoked) {
        if (p->undone == 0) {
            for (hb_offpart_t **pp = &o->revoked; *pp; pp = &(*pp)->next)
                if (*pp == p) {
                    *pp = p->next;
                    break;
                }
            part_free(p);
        }
        return;
    }
    o->pending--;
    while (p->cnt && p->ring[p->head].done) {
        p->position = p->ring[p->head].offset + 1;
        p->head = (p->head + 1) % p->cap;
        p->cnt--;
        p->base_seq++;
    }
}

size_t hb_offsets_collect(hb_offsets_t *o, rd_kafka_topic_partition_list_t *out) {
    size_t n = 0;
    for (hb_offpart_t *p = o->parts; p; p = p->next) {
        if (p->position < 0 || p->position == p->reported)
            continue;
        rd_kafka_topic_partition_list_add(out, p->topic, p->partition)->offset = p->position;
        p->reported = p->position;
        n++;
    }
    return n;
}

void hb_offsets_forget(hb_offsets_t *o, const char *topic, int32_t partition) {
    for (hb_offpart_t **pp = &o->parts; *pp; pp = &(*pp)->next) {
        hb_offpart_t *p = *pp;
        if (p->partition != partition || strcmp(p->topic, topic))
            continue;
        *pp = p->next;
        o->pending -= p->undone;
        if (p->undone == 0) {
            part_free(p);
        } else {
            p->revoked = 1;
            p->next = o->revoked;
            o->revoked = p;
        }
        return;
    }
}

int hb_offsets_revoked(hb_offref_t ref) {
    return ref.part && ref.part->revoked;
}

size_t hb_offsets_pending(const hb_offsets_t *o) {
    return o->pending;
}

int64_t hb_offsets_position(const hb_offsets_t *o, const char *topic, int32_t partition) {
    for (const hb_offpart_t *p = o->parts; p; p = p->next)
        if (p->partition == partition && !strcmp(p->topic, topic))
            return p->position;
    return -1;
}
