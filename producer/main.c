/*
 * hookbridge-producer: publishes identity events to the events topic.
 *
 *   hookbridge-producer [FILE|-]             one JSON event per line (stdin by default)
 *   hookbridge-producer --generate N [--rate R]   N synthetic events, at most R per second
 *   hookbridge-producer --listen HOST:PORT   the Okta event-hook endpoint (ingest.c)
 *   hookbridge-producer --okta-logs ORG_URL --since T --until T [--filter F]
 *                                            a window of Okta's System Log (oktalog.c)
 *   --framing registry [--schema-id N]       Schema Registry framing instead of single-object
 *
 * Read configuration, build the sender, feed it lines or generated events
 * until the input ends or SIGINT/SIGTERM, wait for every delivery report
 * (bounded once a stop was requested), print "produced N, failed M" and exit
 * non-zero if anything failed. A bad line is reported on stderr by number and
 * does not stop the others. A stop (or a read error) leaves the input at a
 * line: that line is said, with the lines left unsent, so that a run again
 * publishes exactly the rest. Everything else is in producer.c and
 * lib/hb_generate.c.
 */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hb_config.h"
#include "hb_event.h"
#include "hb_ingest.h"
#include "hb_listen.h"
#include "hb_log.h"
#include "hb_service.h"
#include "hb_signal.h"
#include "producer.h"

#define PROG "hookbridge-producer"
/* Why a run stopped that hb_producer_stalled says stopped. */
#define STALLED " (the Kafka brokers took no event for 30 s: the local queue stayed full)"
/* After SIGINT/SIGTERM, how long queued events may still be delivered. */
#define HB_PRODUCER_DRAIN_MS 5000
/* Reading a file or stdin with brokers that do not answer at start, how long
 * an event waits for them before it fails (message.timeout.ms;
 * HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS wins): a user with a wrong broker
 * address hears so in half a minute, not after librdkafka's 5. Brokers that
 * answered at start keep librdkafka's 300 s (a stream rides out an outage),
 * and so does --generate (load, benchmarks). */
#define HB_PRODUCER_CLI_TIMEOUT_MS 30000

typedef struct {
    const char *file;   /* NULL or "-": stdin */
    const char *listen; /* --listen: the ingest endpoint (overrides ingest_listen) */
    long long generate; /* > 0: synthetic mode */
    double rate;        /* events per second, 0: unlimited */
    int allow_unknown_types;
    int print_only;
    int list_types;
    int registry_framing;   /* --framing registry: 0x00 + schema id */
    long long schema_id;    /* --schema-id; -1: register the schema to learn it */
    hb_oktalog_opts_t okta; /* --okta-logs: org_url set */
} opts_t;

static void usage(FILE *fp) {
    fprintf(fp, "Usage: " PROG " [options] [FILE|-]\n"
                "       " PROG " [options] --generate N [--rate R]\n"
                "       " PROG " [options] --listen HOST:PORT\n"
                "       " PROG " [options] --okta-logs ORG_URL --since T --until T [--filter F]\n\n"
                "Publishes identity events (Okta System Log LogEvent JSON, one per line) to the\n"
                "events topic as single-object-encoded Avro, keyed by the target user's id.\n"
                "uuid and published are filled in when absent. Prints \"produced N, failed M\"\n"
                "and exits 1 if any event failed. An event the brokers have not acknowledged\n"
                "within 300 s fails; reading FILE, stdin or --okta-logs with brokers that do\n"
                "not answer at start, within 30 s (HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS sets\n"
                "the wait). A local queue that stays full for 30 s (the brokers take\n"
                "nothing) stops the run as SIGINT does, saying where the input was left.\n\n"
                "  --generate N           produce N synthetic events instead of reading input\n"
                "  --rate R               at most R events per second (with --generate)\n"
                "  --allow-unknown-types  accept event types missing from the catalogue\n"
                "  --print                write the normalized events to stdout, produce nothing\n"
                "                         (the log goes to stderr; a stop waits for the line\n"
                "                         being written, a closed stdout stops the run)\n"
                "  --list-types           print the event type catalogue and exit\n"
                "  --listen HOST:PORT     serve Okta event hooks (POST/GET " HB_INGEST_PATH ")\n"
                "                         until SIGTERM; see ingest_listen and docs/ingest.md\n"
                "  --okta-logs ORG_URL    publish the events of Okta's System Log (GET\n"
                "                         ORG_URL/api/v1/logs) between --since and --until\n"
                "                         (RFC 3339), as the ingest endpoint would have; with\n"
                "                         --filter, only those Okta's filter expression takes\n"
                "                         (eventType eq \"user.session.start\"). Needs\n"
                "                         HOOKBRIDGE_OKTA_API_TOKEN; see docs/ingest.md\n"
                "  --framing F            single-object (default) or registry: the Schema\n"
                "                         Registry framing (0x00 + 4-byte schema id)\n"
                "  --schema-id N          the registry id of the IdentityEvent schema; without it\n"
                "                         the schema is registered under <events topic>-value at\n"
                "                         schema_registry_url, which gives the id\n");
}

/* A whole-string number: decimal digits only (no sign, blank or 0x), no
 * overflow. */
static int parse_count(const char *s, long long *out) {
    char *end;
    if (!*s || s[strspn(s, "0123456789")])
        return -1;
    errno = 0;
    *out = strtoll(s, &end, 10);
    return errno || end == s || *end || *out < 0 ? -1 : 0;
}

static int parse_rate(const char *s, double *out) {
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    return errno || end == s || *end || !isfinite(*out) || *out <= 0 ? -1 : 0;
}

/* A header name is an RFC 9110 token: no blank, colon or control character. */
static int header_name_valid(const char *s) {
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!strchr("!#$%&'*+-.^_`|~", *s) && !(*s >= '0' && *s <= '9') &&
            !(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z'))
            return 0;
    return 1;
}

/* Flags left in cfg->args by hb_config_load: "--flag value" or "--flag=value". */
static int parse_args(const hb_config_t *cfg, opts_t *o) {
    memset(o, 0, sizeof(*o));
    o->schema_id = -1;
    for (int i = 0; i < cfg->args_cnt; i++) {
        const char *a = cfg->args[i], *val = NULL, *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        int is_generate = nlen == 10 && !strncmp(a, "--generate", 10);
        int is_rate = nlen == 6 && !strncmp(a, "--rate", 6);
        int is_listen = nlen == 8 && !strncmp(a, "--listen", 8);
        int is_framing = nlen == 9 && !strncmp(a, "--framing", 9);
        int is_schema_id = nlen == 11 && !strncmp(a, "--schema-id", 11);
        int is_okta = nlen == 11 && !strncmp(a, "--okta-logs", 11);
        int is_since = nlen == 7 && !strncmp(a, "--since", 7);
        int is_until = nlen == 7 && !strncmp(a, "--until", 7);
        int is_filter = nlen == 8 && !strncmp(a, "--filter", 8);
        if (is_generate || is_rate || is_listen || is_framing || is_schema_id || is_okta ||
            is_since || is_until || is_filter) {
            if (eq) {
                val = eq + 1;
            } else if (i + 1 < cfg->args_cnt) {
                val = cfg->args[++i];
            } else {
                fprintf(stderr, PROG ": %s needs a value\n", a);
                return -1;
            }
        }
        if (is_listen) {
            o->listen = val;
        } else if (is_okta || is_since || is_until || is_filter) {
            *(is_okta    ? &o->okta.org_url
              : is_since ? &o->okta.since
              : is_until ? &o->okta.until
                         : &o->okta.filter) = val;
        } else if (is_framing) {
            if (strcmp(val, "registry") && strcmp(val, "confluent") &&
                strcmp(val, "single-object")) {
                fprintf(stderr, PROG ": --framing is single-object or registry, not \"%s\"\n", val);
                return -1;
            }
            o->registry_framing = strcmp(val, "single-object") != 0;
        } else if (is_schema_id) {
            if (parse_count(val, &o->schema_id) < 0 || o->schema_id > UINT32_MAX) {
                fprintf(stderr, PROG ": --schema-id wants a registry schema id, not \"%s\"\n", val);
                return -1;
            }
        } else if (is_generate) {
            if (parse_count(val, &o->generate) < 0 || o->generate == 0) {
                fprintf(stderr, PROG ": --generate wants a positive number, not \"%s\"\n", val);
                return -1;
            }
        } else if (is_rate) {
            if (parse_rate(val, &o->rate) < 0) {
                fprintf(stderr, PROG ": --rate wants events per second > 0, not \"%s\"\n", val);
                return -1;
            }
        } else if (!strcmp(a, "--allow-unknown-types")) {
            o->allow_unknown_types = 1;
        } else if (!strcmp(a, "--print")) {
            o->print_only = 1;
        } else if (!strcmp(a, "--list-types")) {
            o->list_types = 1;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, PROG ": unknown option \"%s\" (see --help)\n", a);
            return -1;
        } else if (o->file) {
            fprintf(stderr, PROG ": one input file at most (got \"%s\" and \"%s\")\n", o->file, a);
            return -1;
        } else {
            o->file = a;
        }
    }
    if (o->file && o->generate) {
        fprintf(stderr, PROG ": --generate reads no input file\n");
        return -1;
    }
    if ((o->okta.since || o->okta.until || o->okta.filter) && !o->okta.org_url) {
        fprintf(stderr, PROG ": --since, --until and --filter go with --okta-logs\n");
        return -1;
    }
    if (o->okta.org_url) {
        char why[300];
        if (o->file || o->generate || *cfg->ingest_listen) {
            fprintf(stderr, PROG ": --okta-logs reads Okta's System Log: no input file, "
                                 "--generate or --listen with it\n");
            return -1;
        }
        if (hb_oktalog_check(cfg, &o->okta, why, sizeof(why)) < 0) {
            fprintf(stderr, PROG ": %s\n", why);
            return -1;
        }
        o->allow_unknown_types = 1; /* Okta has hundreds of types, as at the endpoint */
    }
    if (o->schema_id >= 0 && !o->registry_framing) {
        fprintf(stderr, PROG ": --schema-id goes with --framing registry\n");
        return -1;
    }
    if (o->registry_framing && o->schema_id < 0 && !*cfg->schema_registry_url) {
        fprintf(stderr, PROG ": --framing registry needs --schema-id or "
                             "HOOKBRIDGE_SCHEMA_REGISTRY_URL (to register the schema)\n");
        return -1;
    }
    if (o->registry_framing && o->listen) {
        fprintf(stderr, PROG ": the ingest endpoint writes single-object framing only\n");
        return -1;
    }
    if (o->rate > 0 && !o->generate) {
        fprintf(stderr, PROG ": --rate goes with --generate\n");
        return -1;
    }
    if (!o->listen && *cfg->ingest_listen)
        o->listen = cfg->ingest_listen;
    if (o->listen && (o->file || o->generate || o->print_only)) {
        fprintf(stderr, PROG ": --listen (ingest_listen) serves Okta event hooks; it reads no "
                             "input file and goes with neither --generate nor --print\n");
        return -1;
    }
    if (o->listen) {
        char why[128];
        const char *bad = hb_listen_check(o->listen, why, sizeof(why)) != HB_LISTEN_OK
                              ? "--listen (HOOKBRIDGE_INGEST_LISTEN)"
                          : hb_listen_check(cfg->http_listen, why, sizeof(why)) != HB_LISTEN_OK
                              ? "HOOKBRIDGE_HTTP_LISTEN"
                              : NULL;
        if (bad) {
            fprintf(stderr,
                    PROG ": %s is not a listen address (%s; write host:port, [v6]:port or "
                         ":port)\n",
                    bad, why);
            return -1;
        }
    }
    if (o->listen && !*cfg->ingest_auth_value && !cfg->ingest_allow_unauthenticated) {
        fprintf(stderr,
                PROG ": --listen needs HOOKBRIDGE_INGEST_AUTH_VALUE, the secret every request "
                     "must carry in the %s header (Okta's \"Authentication secret\"); for local "
                     "use without one set HOOKBRIDGE_INGEST_ALLOW_UNAUTHENTICATED=1\n",
                cfg->ingest_auth_header);
        return -1;
    }
    if (o->listen && !header_name_valid(cfg->ingest_auth_header)) {
        fprintf(stderr, PROG ": HOOKBRIDGE_INGEST_AUTH_HEADER is not a header name (letters, "
                             "digits and -, no blank or colon): name the header that carries "
                             "the ingest secret\n");
        return -1;
    }
    if (o->listen && !hb_header_value_sendable(cfg->ingest_auth_value)) {
        /* the value is a secret: say what is wrong with it, never what it is */
        fprintf(stderr, PROG ": HOOKBRIDGE_INGEST_AUTH_VALUE has a line break, another control "
                             "character or a blank at either end (a file's last newline?): no "
                             "HTTP request can carry it in a header, so every delivery would "
                             "be 401\n");
        return -1;
    }
    return 0;
}

/* s as one word for a POSIX shell, into out (n bytes; cut short if s is
 * too long, which the caller's buffer size rules out): as it is when it
 * has only characters no shell treats specially, else in single quotes
 * (a quote in it as '\''). */
static const char *shell_word(const char *s, char *out, size_t n) {
    size_t k = 0;
    int plain = *s != '\0';
    for (const char *c = s; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr("_./@%+=:,-", *c))
            plain = 0;
    if (plain)
        return snprintf(out, n, "%s", s), out;
    out[k++] = '\'';
    for (const char *c = s; *c && k + 5 < n; c++) {
        if (*c == '\'') {
            memcpy(out + k, "'\\''", 4);
            k += 4;
        } else
            out[k++] = *c;
    }
    out[k++] = '\'';
    out[k] = '\0';
    return out;
}

static int only_space(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

/* One JSON event per line; empty lines are skipped but still counted.
 * Returns the number of the last line taken (every line up to it was sent,
 * refused or skipped); *ended: the input was read to its end; *read_errno:
 * why reading failed before it, 0 if it did not; *partial: the next line was
 * read only in part when it failed (its start is lost on a pipe). */
static long long run_lines(hb_producer_t *p, FILE *in, int *ended, int *read_errno, int *partial) {
    char *line = NULL;
    size_t cap = 0;
    long long lineno = 0;
    ssize_t n;
    while (!hb_stop_requested && (n = getline(&line, &cap, in)) >= 0) {
        json_error_t jerr;
        json_t *ev;
        if (n > 0 && line[n - 1] != '\n' && (ferror(in) || hb_stop_requested)) {
            /* the read failed (a signal interrupted it), or a stop came
             * while it waited and the input ended (Ctrl-C ends the writer
             * too), part-way through a line: what came of it is no line, and
             * it is not taken (it was "line N: invalid JSON", a failure
             * counted for a line that was fine) */
            *partial = 1;
            break;
        }
        lineno++;
        if (only_space(line, (size_t)n))
            continue;
        ev = hb_ingest_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, &jerr); /* as Okta's */
        if (!ev) {
            char reason[300];
            snprintf(reason, sizeof(reason), "invalid JSON at column %d: %s", jerr.column,
                     jerr.text);
            hb_producer_reject(p, lineno, reason);
            continue;
        }
        hb_ingest_okta_adjust(ev); /* a LogEvent as Okta writes it */
        if (hb_producer_send(p, ev, lineno) == HB_PRODUCER_STOPPED) {
            json_decref(ev);
            lineno--; /* not taken: a run again starts there */
            break;
        }
        json_decref(ev);
    }
    *ended = feof(in) != 0;
    *read_errno = ferror(in) && !hb_stop_requested ? (errno ? errno : EIO) : 0;
    free(line);
    return lineno;
}

/* N synthetic events; with a rate, event i is due at start + i/rate and the
 * wait in between serves delivery reports (no busy loop). */
static long long run_generate(hb_producer_t *p, long long count, double rate) {
    hb_gen_t g;
    long long made = 0;
    int64_t start = hb_mono_ms();
    hb_gen_init(&g, (uint64_t)hb_wall_ms() ^ ((uint64_t)getpid() << 32));
    for (long long i = 0; i < count && !hb_stop_requested; i++) {
        json_t *ev;
        if (rate > 0) {
            int64_t due = start + (int64_t)((double)i * 1000.0 / rate), now;
            while (!hb_stop_requested && (now = hb_mono_ms()) < due) {
                int64_t wait = due - now;
                hb_producer_poll(p, wait > 100 ? 100 : (int)wait);
            }
            if (hb_stop_requested)
                break;
        }
        ev = hb_gen_event(&g);
        if (hb_producer_send(p, ev, i + 1) == HB_PRODUCER_STOPPED) {
            json_decref(ev);
            break;
        }
        json_decref(ev);
        made++;
    }
    hb_gen_free(&g);
    return made;
}

int main(int argc, char **argv) {
    hb_config_t cfg;
    hb_log_level_t lvl = HB_LOG_INFO;
    hb_producer_t *p = NULL;
    FILE *in = NULL;
    opts_t o;
    char errstr[512], last_read[64] = "";
    long long taken = 0;
    int r, rc = 1, okta_ok = 1, ended = 0, read_errno = 0, partial = 0;

    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            usage(stdout);
    r = hb_config_load(&cfg, HB_PROG_PRODUCER, PROG, argc, argv, errstr, sizeof(errstr));
    if (r != 0) {
        if (r < 0)
            fprintf(stderr, PROG ": %s\n", errstr);
        hb_config_free(&cfg);
        return r < 0 ? 2 : 0;
    }
    if (parse_args(&cfg, &o) < 0) {
        hb_config_free(&cfg);
        return 2;
    }
    if (o.list_types) {
        for (size_t i = 0; i < hb_event_types_count(); i++)
            printf("%s\n", hb_event_type_at(i));
        hb_config_free(&cfg);
        return 0;
    }
    /* Under a soft limit on open files below what the endpoint's connections
     * need, accept(2) failed with EMFILE: libmicrohttpd spun on it at 100 %
     * CPU and the health port stopped answering. Raised to the hard limit as
     * the services do (hb_service.c); a hard limit below that refuses to
     * start, naming the setting. */
    unsigned long long files_was = 0, files = o.listen ? hb_open_files_raise(&files_was) : 0;
    if (files && (long long)files < hb_ingest_open_files(&cfg)) {
        fprintf(stderr,
                PROG ": HOOKBRIDGE_INGEST_MAX_CONNECTIONS (%lld) needs %lld open files, but this "
                     "process may open %llu (ulimit -n, RLIMIT_NOFILE): lower it or raise the "
                     "limit\n",
                (long long)cfg.ingest_max_connections, hb_ingest_open_files(&cfg), files);
        hb_config_free(&cfg);
        return 2;
    }
    if (hb_log_level_parse(cfg.log_level, &lvl) < 0) /* validated by hb_config_load */
        lvl = HB_LOG_INFO;
    hb_log_init("producer", lvl);
    if (files_was)
        hb_info("open files limit raised from %llu to the hard limit, %llu", files_was, files);
    if (o.print_only) /* stdout is the events: saved, they are published again as they are */
        hb_log_to_stderr();
    hb_signal_install(-1);
    if (o.listen) {
        rc = hb_ingest_serve(&cfg, o.listen);
        hb_config_free(&cfg);
        return rc;
    }

    if (!o.generate && !o.okta.org_url) {
        struct stat st;
        in = !o.file || !strcmp(o.file, "-") ? stdin : fopen(o.file, "r");
        if (in && in != stdin && fstat(fileno(in), &st) == 0 && S_ISDIR(st.st_mode)) {
            fclose(in);
            in = NULL;
            errno = EISDIR;
        }
        if (!in) {
            fprintf(stderr, PROG ": %s: %s\n", o.file, strerror(errno));
            rc = 2;
            goto done;
        }
    }
    p = hb_producer_new(&cfg, o.allow_unknown_types, o.print_only,
                        o.generate || o.okta.org_url ? "event" : "line",
                        o.generate ? 0 : HB_PRODUCER_CLI_TIMEOUT_MS, errstr, sizeof(errstr));
    if (!p) {
        fprintf(stderr, PROG ": %s\n", errstr);
        goto done;
    }
    if (o.registry_framing &&
        hb_producer_use_registry(p, o.schema_id, errstr, sizeof(errstr)) < 0) {
        fprintf(stderr, PROG ": %s\n", errstr);
        goto done;
    }
    if (o.generate)
        taken = run_generate(p, o.generate, o.rate);
    else if (o.okta.org_url)
        okta_ok = hb_oktalog_run(p, &cfg, &o.okta, last_read, sizeof(last_read)) == 0;
    else
        taken = run_lines(p, in, &ended, &read_errno, &partial);
    hb_producer_finish(p, HB_PRODUCER_DRAIN_MS);
    fflush(stdout);
    fprintf(o.print_only ? stderr : stdout, "%s %lld, failed %lld\n",
            o.print_only ? "printed" : "produced", hb_producer_delivered(p), hb_producer_failed(p));
    fflush(o.print_only ? stderr : stdout);
    if (o.okta.org_url) {
        hb_oktalog_resume(p, &o.okta, okta_ok, last_read);
    } else if (o.generate && taken < o.generate) {
        fprintf(stderr, PROG ": stopped after event %lld of %lld%s\n", taken, o.generate,
                hb_producer_stalled(p) ? STALLED : "");
    } else if (!o.generate && (!ended || partial)) {
        /* where the input was left (a stop, a read error): the lines after
         * it were never read */
        char why[300] = "";
        if (read_errno)
            snprintf(why, sizeof(why), " (reading failed: %s)", strerror(read_errno));
        else if (hb_producer_stalled(p))
            snprintf(why, sizeof(why), "%s", STALLED);
        if (partial)
            snprintf(why + strlen(why), sizeof(why) - strlen(why),
                     " (line %lld was read only in part: not published)", taken + 1);
        if (in != stdin) {
            /* the command that goes on as this run did: with its options
             * (--print's rest was published by a bare "hookbridge-producer
             * -", its registry framing dropped) */
            char opts[96] = "";
            if (o.print_only)
                strcat(opts, " --print");
            if (o.allow_unknown_types)
                strcat(opts, " --allow-unknown-types");
            if (o.registry_framing)
                strcat(opts, " --framing registry");
            if (o.registry_framing && o.schema_id >= 0)
                snprintf(opts + strlen(opts), sizeof(opts) - strlen(opts), " --schema-id %lld",
                         o.schema_id);
            char word[4 * PATH_MAX + 8];
            fprintf(stderr,
                    PROG ": stopped after line %lld of %s%s: the lines after it were not read "
                         "(tail -n +%lld %s | " PROG "%s - %s them)\n",
                    taken, o.file, why, taken + 1, shell_word(o.file, word, sizeof(word)), opts,
                    o.print_only ? "prints" : "publishes");
        } else {
            fprintf(stderr,
                    PROG ": stopped after line %lld of stdin%s: the lines after it were "
                         "not read\n",
                    taken, why);
        }
    }
    rc = hb_producer_failed(p) > 0 || hb_stop_requested || !okta_ok ||
                 (!o.generate && !o.okta.org_url && !ended)
             ? 1
             : 0;
done:
    hb_producer_free(p);
    if (in && in != stdin)
        fclose(in);
    hb_config_free(&cfg);
    return rc;
}
