/* Ordered delivery per key: keys and the chains' decisions (see hb_ordering.h). */
#include "hb_ordering.h"

#include <stdlib.h>
#include <string.h>

#include "hb_hash.h"
#include "hb_json.h"

/* ------------------------------------------------------------------ keys */

static const char *id_of(const json_t *obj) {
    const char *s = json_string_value(json_object_get(obj, "id"));
    return s && *s ? s : NULL;
}

static int copy_key(const char *s, size_t n, char *out, size_t outsz) {
    if (!s || n == 0 || outsz == 0)
        return 0;
    if (n >= outsz) { /* cut at a character's start: the key stays UTF-8 */
        n = outsz - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return 1;
}

/* A message key that is not text (a NUL byte in it, or not UTF-8: an Avro-
 * or number-serialized key) as "0x" and its bytes in hex: as a C string or
 * in the text column of ordering_tails, its bytes would be cut at the first
 * NUL or replaced, and different keys would share one chain. */
static int hex_key(const unsigned char *k, size_t n, char *out, size_t outsz) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (outsz < 5)
        return 0;
    out[o++] = '0';
    out[o++] = 'x';
    for (size_t i = 0; i < n && o + 2 < outsz; i++) {
        out[o++] = hex[k[i] >> 4];
        out[o++] = hex[k[i] & 0x0f];
    }
    out[o] = '\0';
    return 1;
}

int hb_order_key(hb_order_by_t by, const json_t *event, const void *msg_key, size_t msg_key_len,
                 char *out, size_t outsz) {
    const json_t *t;
    const char *id = NULL;
    size_t i;

    switch (by) {
    case HB_ORDER_ACTOR: id = id_of(json_object_get(event, "actor")); break;
    case HB_ORDER_TARGET:
        json_array_foreach(json_object_get(event, "target"), i, t) {
            const char *type = json_string_value(json_object_get(t, "type"));
            if (type && !strcmp(type, "User") && id_of(t)) {
                id = id_of(t);
                break;
            }
        }
        if (!id)
            id = id_of(json_array_get(json_object_get(event, "target"), 0));
        break;
    case HB_ORDER_KEY:
        if (!msg_key || !msg_key_len)
            return 0;
        if (memchr(msg_key, '\0', msg_key_len) || !hb_json_utf8_ok(msg_key, msg_key_len))
            return hex_key(msg_key, msg_key_len, out, outsz);
        return copy_key(msg_key, msg_key_len, out, outsz);
    default: return 0;
    }
    return copy_key(id, id ? strlen(id) : 0, out, outsz);
}

const char *hb_order_by_name(hb_order_by_t by) {
    switch (by) {
    case HB_ORDER_ACTOR: return "actor";
    case HB_ORDER_TARGET: return "target";
    case HB_ORDER_KEY: return "key";
    default: return "";
    }
}

/* ---------------------------------------------------------------- chains */

typedef struct item_s {
    void *item;
    char id[HB_UUID_LEN + 1];
} item_t;

struct hb_chain_s {
    char sub_id[HB_UUID_LEN + 1];
    char *key;
    char tail[HB_UUID_LEN + 1]; /* newest delivery of the key known here */
    int unknown;                /* the tail must be asked for (new chain, partitions moved) */
    int asking;                 /* a question to the log is open: ASK_KEY or ASK_TAIL, else 0 */
    int busy;                   /* the head is in flight */
    int parked;                 /* the tail waits in a delay tier (not final, as far as known) */
    int parked_seen;            /* ... and that was learnt for this burst: park without asking */
    int stopped;
    /* After a forget: this chain's own tail (its row may not be in the log
     * yet: a retry's row follows the broker's ack), checked by id when the
     * log names another one, whose answer waits in log_tail/log_parked. */
    char mine[HB_UUID_LEN + 1];
    int checking; /* the ASK_TAIL open or due is about mine */
    char log_tail[HB_UUID_LEN + 1];
    int log_parked;
    item_t *q; /* queued: q[head..n) */
    size_t head, n, cap;
    int64_t used_ms;
};

struct hb_chains_s {
    hb_hash_t chains; /* "sub_id key" -> hb_chain_t* */
};

hb_chains_t *hb_chains_new(void) {
    return hb_calloc(1, sizeof(hb_chains_t));
}

static void chain_free(hb_chain_t *c, void (*drop)(void *item)) {
    for (size_t i = c->head; i < c->n; i++)
        if (drop)
            drop(c->q[i].item);
    free(c->q);
    free(c->key);
    free(c);
}

void hb_chains_free(hb_chains_t *cs, void (*drop)(void *item)) {
    hb_hash_slot_t *s;
    size_t pos = 0;
    if (!cs)
        return;
    while ((s = hb_hash_each(&cs->chains, &pos)) != NULL)
        chain_free(s->val, drop);
    hb_hash_clear(&cs->chains);
    free(cs);
}

static char *chain_name(const char *sub_id, const char *key) {
    size_t len = strlen(sub_id) + 1 + strlen(key) + 1;
    char *name = hb_malloc(len);
    snprintf(name, len, "%s %s", sub_id, key);
    return name;
}

hb_chain_t *hb_chains_get(hb_chains_t *cs, const char *sub_id, const char *key, int64_t now_ms) {
    char *name = chain_name(sub_id, key);
    hb_chain_t *c = hb_hash_get(&cs->chains, name);
    if (!c) {
        c = hb_calloc(1, sizeof(*c));
        snprintf(c->sub_id, sizeof(c->sub_id), "%s", sub_id);
        c->key = hb_strdup(key);
        c->unknown = 1;
        (void)hb_hash_put(&cs->chains, name, c);
    }
    c->used_ms = now_ms;
    free(name);
    return c;
}

size_t hb_chains_count(const hb_chains_t *cs) {
    return hb_hash_count(&cs->chains);
}

void hb_chains_forget(hb_chains_t *cs) {
    hb_hash_slot_t *s;
    size_t pos = 0;
    while ((s = hb_hash_each(&cs->chains, &pos)) != NULL) {
        hb_chain_t *c = s->val;
        c->unknown = 1;
        c->parked_seen = 0;
        c->checking = 0;
        if (*c->tail) /* what this process did last for the key */
            memcpy(c->mine, c->tail, sizeof(c->mine));
    }
}

size_t hb_chains_withdraw(hb_chains_t *cs, int (*which)(void *item, void *arg),
                          void (*drop)(void *item, void *arg), void *arg) {
    hb_hash_slot_t *s;
    size_t pos = 0, n = 0, out_n = 0, out_cap = 0;
    void **out = NULL;
    while ((s = hb_hash_each(&cs->chains, &pos)) != NULL) {
        hb_chain_t *c = s->val;
        size_t kept = c->head;
        for (size_t i = c->head; i < c->n; i++) {
            if (!which(c->q[i].item, arg)) {
                c->q[kept++] = c->q[i];
                continue;
            }
            if (out_n == out_cap) {
                out_cap = out_cap ? out_cap * 2 : 64;
                out = hb_realloc(out, out_cap * sizeof(*out));
            }
            out[out_n++] = c->q[i].item;
        }
        n += c->n - kept;
        c->n = kept;
    }
    for (size_t i = 0; i < out_n; i++)
        drop(out[i], arg);
    free(out);
    return n;
}

/* A chain whose tail waits in a tier stays this many times longer: it spares
 * the next arrival a question, and by then the tail's row is in the log. */
#define PARKED_IDLE_FACTOR 5

static int chain_idle(const hb_chain_t *c) {
    return !c->busy && !c->asking && c->head == c->n;
}

size_t hb_chains_evict_idle(hb_chains_t *cs, int64_t now_ms, int64_t idle_ms) {
    hb_hash_slot_t *s;
    size_t pos = 0, evicted = 0;
    while ((s = hb_hash_each(&cs->chains, &pos)) != NULL) {
        hb_chain_t *c = s->val;
        if (chain_idle(c) &&
            now_ms - c->used_ms >= (c->parked ? PARKED_IDLE_FACTOR : 1) * idle_ms) {
            hb_hash_del(&cs->chains, s); /* removing the slot walked is allowed */
            chain_free(c, NULL);
            evicted++;
        }
    }
    return evicted;
}

const char *hb_chain_sub_id(const hb_chain_t *c) {
    return c->sub_id;
}

const char *hb_chain_key(const hb_chain_t *c) {
    return c->key;
}

const char *hb_chain_tail(const hb_chain_t *c) {
    return c->tail;
}

void hb_chain_push(hb_chain_t *c, void *item, const char *id) {
    if (c->head > 0 && c->head == c->n)
        c->head = c->n = 0;
    if (c->n == c->cap) {
        if (c->head > 0) { /* reuse the room in front */
            memmove(c->q, c->q + c->head, (c->n - c->head) * sizeof(*c->q));
            c->n -= c->head;
            c->head = 0;
        } else {
            c->cap = c->cap ? c->cap * 2 : 4;
            c->q = hb_realloc(c->q, c->cap * sizeof(*c->q));
        }
    }
    c->q[c->n].item = item;
    snprintf(c->q[c->n].id, sizeof(c->q[c->n].id), "%s", id);
    c->n++;
}

hb_chain_step_t hb_chain_next(hb_chain_t *c, void **item, char *after) {
    item_t *it;
    *item = NULL;
    if (c->stopped || c->busy || c->asking)
        return HB_CHAIN_WAIT;
    if (c->head == c->n) {
        c->parked_seen = 0; /* the next arrival asks again */
        return HB_CHAIN_WAIT;
    }
    if (c->unknown) {
        c->asking = HB_CHAIN_ASK_KEY;
        return HB_CHAIN_ASK_KEY;
    }
    if (c->parked && !c->parked_seen) {
        c->asking = HB_CHAIN_ASK_TAIL;
        return HB_CHAIN_ASK_TAIL;
    }
    it = &c->q[c->head++];
    *item = it->item;
    if (c->parked) { /* behind the tail, which waits in a tier */
        memcpy(after, c->tail, sizeof(c->tail));
        memcpy(c->tail, it->id, sizeof(c->tail));
        return HB_CHAIN_PARK;
    }
    memcpy(c->tail, it->id, sizeof(c->tail));
    c->busy = 1;
    return HB_CHAIN_SEND;
}

void hb_chain_answer(hb_chain_t *c, int found, const char *tail_id, int final) {
    if (c->asking == HB_CHAIN_ASK_KEY) {
        c->unknown = 0;
        snprintf(c->tail, sizeof(c->tail), "%s", found && tail_id ? tail_id : "");
        c->parked = found && !final;
        if (*c->mine && strcmp(c->tail, c->mine)) {
            /* the log names another tail: is this chain's own newer (its
             * row on its way)? ask about it before trusting the log */
            memcpy(c->log_tail, c->tail, sizeof(c->tail));
            c->log_parked = c->parked;
            memcpy(c->tail, c->mine, sizeof(c->tail));
            c->checking = 1;
            c->parked = 1;
            c->parked_seen = 0;
            c->asking = 0;
            return;
        }
        *c->mine = '\0';
    } else if (c->checking) {
        /* own tail not logged yet: it is the newest, and waits; logged and
         * final: the log's answer holds; logged and waiting: the log's tail
         * when that waits too (a later one, parked by another replica) */
        c->checking = 0;
        *c->mine = '\0';
        if (found && (final || c->log_parked)) {
            memcpy(c->tail, c->log_tail, sizeof(c->tail));
            c->parked = c->log_parked;
        } else {
            c->parked = 1;
        }
    } else { /* ASK_TAIL: not found is a row on its way */
        c->parked = !final;
    }
    c->parked_seen = c->parked;
    c->asking = 0;
}

void hb_chain_unasked(hb_chain_t *c) {
    c->asking = 0;
}

void hb_chain_settled(hb_chain_t *c, int parked) {
    c->busy = 0;
    c->parked = parked;
    c->parked_seen = parked;
}

void hb_chain_revoked(hb_chain_t *c) {
    hb_chain_settled(c, 1);
}

void hb_chain_stop(hb_chain_t *c) {
    c->stopped = 1;
}
