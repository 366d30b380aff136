/*
 * wsload: the benchmark's load generator in C, one process, one epoll loop.
 *
 * The same three roles, with the same semantics, as the asyncio worker of
 * bench/loadgen.py (the reference): `watch` (Watcher), `place`
 * (_place_on_schedule) and `ingest` (_ingest_closed_loop). bench/loadgen.py
 * runs it when a job says "engine": "c":
 *
 *   wsload --role watch|place|ingest --host H --port P --path /ws/... [--count N]
 *          [--cookies N] [--sample N] [--rate R] [--width W] [--height H]
 *          [--seconds S] [--drain D] [--stride N] [--offset N] [--inflight N]
 *
 * stdin:  the N session cookies, one a line (place, ingest), then later `GO <t0>`.
 * stdout: `READY <sockets> <failures>` once every socket has been tried, then,
 *         at the end, one line: the JSON report the Python worker returns.
 *
 * Build: cc -O2 -o wsload bench/wsload.c (C11 and libc only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HANDSHAKES 25      /* default --inflight: daphne has a handshake timeout */
#define HANDSHAKE_TIMEOUT 60.0 /* as asyncio.wait_for(proto.open, 60) */
#define INGEST_TIMEOUT 30.0    /* Replies.answer's default timeout */
#define READ_SIZE 65536
#define MAX_FRAME (64u << 20) /* a bigger server frame is a protocol error here */
#define STDIN_TAG UINT32_MAX

static const char PIXELS[] = "{\"type\":\"pixels\"";
static const char HELLO[] = "{\"type\":\"hello\"";
static const char ACCEPTED[] = "{\"type\":\"accepted\"";
static const char REJECTED[] = "{\"type\":\"rejected\"";

/* ------------------------------------------------------------------ the job */

enum role { WATCH, PLACE, INGEST };

static struct {
    enum role role;
    const char *host, *port, *path;
    long count, sample, width, height, stride, offset, inflight;
    double rate, seconds, drain;
} job = {.width = 1000, .height = 1000, .rate = 1, .stride = 1,
         .inflight = MAX_HANDSHAKES};

static void die(const char *what) {
    fprintf(stderr, "wsload: %s\n", what);
    exit(2);
}

static void usage(void) {
    die("usage: wsload --role watch|place|ingest --host H --port P --path PATH "
        "[--count N | --cookies N] [--sample N] [--rate R] [--width W] "
        "[--height H] [--seconds S] [--drain D] [--stride N] [--offset N] "
        "[--inflight N]");
}

/* ----------------------------------------------------------------- clocks */

static double now_wall(void) { /* time.time(): t0 comes from the parent as Unix time */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* --------------------------------------------- randomness: keys and masks */

static uint64_t prng_state;

static uint64_t prng(void) { /* splitmix64, seeded from getrandom(): masks, keys */
    uint64_t z = (prng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Python's random.Random(k): MT19937 seeded by init_by_array, so every ingest
 * player places on the same pixels, in the same order, as the Python engine. */
typedef struct {
    uint32_t mt[624];
    int mti;
} MT;

static void mt_init_genrand(MT *m, uint32_t s) {
    m->mt[0] = s;
    for (int i = 1; i < 624; i++)
        m->mt[i] = 1812433253u * (m->mt[i - 1] ^ (m->mt[i - 1] >> 30)) + (uint32_t)i;
    m->mti = 624;
}

static void mt_seed(MT *m, uint32_t k) { /* random_seed() for a small int: key = [k] */
    uint32_t key[1] = {k};
    int i = 1, j = 0, n = 624, key_length = 1;
    mt_init_genrand(m, 19650218u);
    for (int c = n > key_length ? n : key_length; c; c--) {
        m->mt[i] = (m->mt[i] ^ ((m->mt[i - 1] ^ (m->mt[i - 1] >> 30)) * 1664525u)) +
                   key[j] + (uint32_t)j;
        i++;
        j++;
        if (i >= n) {
            m->mt[0] = m->mt[n - 1];
            i = 1;
        }
        if (j >= key_length) j = 0;
    }
    for (int c = n - 1; c; c--) {
        m->mt[i] = (m->mt[i] ^ ((m->mt[i - 1] ^ (m->mt[i - 1] >> 30)) * 1566083941u)) -
                   (uint32_t)i;
        i++;
        if (i >= n) {
            m->mt[0] = m->mt[n - 1];
            i = 1;
        }
    }
    m->mt[0] = 0x80000000u;
}

static uint32_t mt_next(MT *m) {
    static const uint32_t mag01[2] = {0u, 0x9908b0dfu};
    uint32_t y;
    if (m->mti >= 624) {
        int kk;
        for (kk = 0; kk < 624 - 397; kk++) {
            y = (m->mt[kk] & 0x80000000u) | (m->mt[kk + 1] & 0x7fffffffu);
            m->mt[kk] = m->mt[kk + 397] ^ (y >> 1) ^ mag01[y & 1u];
        }
        for (; kk < 623; kk++) {
            y = (m->mt[kk] & 0x80000000u) | (m->mt[kk + 1] & 0x7fffffffu);
            m->mt[kk] = m->mt[kk + (397 - 624)] ^ (y >> 1) ^ mag01[y & 1u];
        }
        y = (m->mt[623] & 0x80000000u) | (m->mt[0] & 0x7fffffffu);
        m->mt[623] = m->mt[396] ^ (y >> 1) ^ mag01[y & 1u];
        m->mti = 0;
    }
    y = m->mt[m->mti++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
}

static long mt_randrange(MT *m, long n) { /* Random.randrange(n), 0 < n < 2**32 */
    int k = 0;
    while ((n >> k) != 0) k++; /* n.bit_length() */
    uint32_t r;
    do r = mt_next(m) >> (32 - k); /* getrandbits(k) */
    while ((long)r >= n);
    return (long)r;
}

/* ------------------------------------------------------------- the sockets */

enum state { NEW, CONNECTING, HANDSHAKE, OPEN, CLOSED, FAILED };
/* A player's sender, the Python coroutine `run(k)`: not started, stepping, asleep
 * until its placement's time, waiting for its answer, or returned. */
enum run { RUN_NONE, RUN_STEP, RUN_TIMER, RUN_ANSWER, RUN_DONE };

typedef struct {
    int fd;
    uint8_t state, run;
    bool sampled, want_out;
    uint32_t gen; /* the current timer's generation; older heap entries are stale */
    int close_code;
    const char *cookie;
    uint8_t *in, *out;
    size_t inlen, incap, outlen, outcap;
    /* Watcher */
    bool has_last;
    int64_t last, hello, received, frames, gaps, repeats;
    /* Replies and its sender */
    int64_t accepted, rejected, max_seq, unsent;
    double late;
    long k, j, mine, pending;
    MT *rng;
} Sock;

static Sock *socks;
static long nsocks, next_start, in_flight, failures;
static long *opened; /* indexes in the order their handshakes completed: `sockets` */
static long nopened;
static int ep;

/* the run */
static bool have_t0;
static double t0, stop_at, end_at;
static long active; /* senders still running */
static long nmine;  /* len(mine) of the place role */

/* watchers' sampled latencies, all sockets */
static double *lat;
static size_t nlat, caplat;

/* rejected codes, merged */
static struct code {
    char name[64];
    long count;
} codes[64];
static int ncodes;

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) die("out of memory");
    return p;
}

/* ------------------------------------------------------------------ timers */

typedef struct {
    double when;
    long sock;
    uint32_t gen;
} Timer;

static Timer *heap;
static size_t hlen, hcap;

static void heap_push(Timer t) {
    if (hlen == hcap) {
        hcap = hcap ? hcap * 2 : 256;
        heap = xrealloc(heap, hcap * sizeof *heap);
    }
    size_t i = hlen++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (heap[parent].when <= t.when) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = t;
}

static Timer heap_pop(void) {
    Timer top = heap[0], last = heap[--hlen];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= hlen) break;
        if (c + 1 < hlen && heap[c + 1].when < heap[c].when) c++;
        if (last.when <= heap[c].when) break;
        heap[i] = heap[c];
        i = c;
    }
    if (hlen) heap[i] = last;
    return top;
}

static void arm(Sock *s, double when) {
    s->gen++;
    heap_push((Timer){when, s - socks, s->gen});
}

static void disarm(Sock *s) { s->gen++; }

/* ----------------------------------------------------------------- writing */

static void sock_close(Sock *s);

static void watch_out(Sock *s, bool on) {
    if (s->want_out == on) return;
    s->want_out = on;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0u),
                             .data.u32 = (uint32_t)(s - socks)};
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static void flush_out(Sock *s) {
    size_t done = 0;
    while (done < s->outlen) {
        ssize_t w = send(s->fd, s->out + done, s->outlen - done, MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            sock_close(s);
            return;
        }
    }
    memmove(s->out, s->out + done, s->outlen - done);
    s->outlen -= done;
    watch_out(s, s->outlen > 0);
}

static void sock_write(Sock *s, const void *data, size_t n) {
    if (s->outlen + n > s->outcap) {
        s->outcap = (s->outlen + n) * 2;
        s->out = xrealloc(s->out, s->outcap);
    }
    memcpy(s->out + s->outlen, data, n);
    s->outlen += n;
    flush_out(s);
}

/* A client frame: masked, with a random mask. */
static void send_frame(Sock *s, uint8_t first, const uint8_t *payload, size_t n) {
    uint8_t small[256], *frame = n + 14 <= sizeof small ? small : xrealloc(NULL, n + 14);
    size_t h = 0;
    frame[h++] = first;
    if (n < 126) {
        frame[h++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        frame[h++] = 0x80 | 126;
        frame[h++] = (uint8_t)(n >> 8);
        frame[h++] = (uint8_t)n;
    } else {
        frame[h++] = 0x80 | 127;
        for (int b = 7; b >= 0; b--) frame[h++] = (uint8_t)((uint64_t)n >> (8 * b));
    }
    uint32_t mask32 = (uint32_t)prng();
    uint8_t mask[4];
    memcpy(mask, &mask32, 4);
    memcpy(frame + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) frame[h + i] = payload[i] ^ mask[i & 3];
    sock_write(s, frame, h + n);
    if (frame != small) free(frame);
}

static void send_text(Sock *s, const char *text, size_t n) {
    send_frame(s, 0x81, (const uint8_t *)text, n);
}

/* ---------------------------------------------------------------- opening */

static struct addrinfo *addr;

static void fill_connects(void);

static void start_connect(long i) {
    Sock *s = &socks[i];
    s->fd = addr ? socket(addr->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) : -1;
    if (s->fd < 0) {
        s->state = FAILED;
        failures++;
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
    s->want_out = true;
    if (connect(s->fd, addr->ai_addr, addr->ai_addrlen) < 0 && errno != EINPROGRESS) {
        close(s->fd);
        s->fd = -1;
        s->state = FAILED;
        failures++;
        return;
    }
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) {
        close(s->fd);
        s->fd = -1;
        s->state = FAILED;
        failures++;
        return;
    }
    s->state = CONNECTING;
    in_flight++;
    arm(s, now_wall() + HANDSHAKE_TIMEOUT);
}

static void fill_connects(void) {
    while (in_flight < job.inflight && next_start < nsocks) start_connect(next_start++);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Socket.connection_made: the upgrade request, as a browser on HOST:PORT sends it. */
static void on_connected(Sock *s) {
    uint8_t raw[18] = {0};
    uint64_t a = prng(), b = prng();
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    char key[25];
    for (int i = 0, o = 0; i < 18; i += 3) { /* 16 bytes -> 24 chars, "==" padded */
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        key[o++] = B64[v >> 18 & 63];
        key[o++] = B64[v >> 12 & 63];
        key[o++] = B64[v >> 6 & 63];
        key[o++] = B64[v & 63];
    }
    key[22] = key[23] = '=';
    key[24] = 0;
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\nOrigin: http://%s:%s\r\n",
                     job.path, job.host, job.port, key, job.host, job.port);
    if (s->cookie && *s->cookie)
        n += snprintf(req + n, sizeof req - (size_t)n, "Cookie: sessionid=%s\r\n", s->cookie);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    if (n >= (int)sizeof req) die("request line too long");
    s->state = HANDSHAKE;
    arm(s, now_wall() + HANDSHAKE_TIMEOUT);
    sock_write(s, req, (size_t)n);
}

static void handshake_done(Sock *s) {
    s->state = OPEN;
    disarm(s);
    in_flight--;
    opened[nopened++] = s - socks;
    fill_connects();
}

static void run_end(Sock *s) {
    if (s->run == RUN_STEP || s->run == RUN_TIMER || s->run == RUN_ANSWER) {
        s->run = RUN_DONE;
        disarm(s);
        active--;
    }
}

/* Close a socket for good: before its handshake completes it counts as a failure. */
static void sock_close(Sock *s) {
    if (s->fd >= 0) {
        close(s->fd); /* also leaves the epoll set */
        s->fd = -1;
    }
    if (s->state == CONNECTING || s->state == HANDSHAKE) {
        s->state = FAILED;
        disarm(s);
        in_flight--;
        failures++;
        fill_connects();
    } else if (s->state == OPEN) {
        s->state = CLOSED;
        run_end(s); /* its answer can't come: the Python coroutine would time out */
    }
}

/* --------------------------------------------------------- parsing helpers */

static bool starts(const uint8_t *p, size_t n, const char *prefix, size_t len) {
    return n >= len && memcmp(p, prefix, len) == 0;
}

/* Python's int() of the bytes [p, end) (a JSON integer from the server). */
static bool parse_int(const uint8_t *p, const uint8_t *end, int64_t *out) {
    bool neg = false;
    if (p < end && (*p == '-' || *p == '+')) neg = *p++ == '-';
    if (p >= end) return false;
    int64_t v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return false;
        v = v * 10 + (*p - '0');
    }
    *out = neg ? -v : v;
    return true;
}

/* A number up to the next comma from p: int(payload[p : payload.index(",", p)]). */
static bool int_to_comma(const uint8_t *p, const uint8_t *end, int64_t *out) {
    const uint8_t *comma = memchr(p, ',', (size_t)(end - p));
    return comma && parse_int(p, comma, out);
}

/* The integer value of `"field":` in a compact JSON object. */
static bool json_int(const uint8_t *p, size_t n, const char *field, int64_t *out) {
    const uint8_t *f = memmem(p, n, field, strlen(field)), *end = p + n;
    if (!f) return false;
    const uint8_t *q = f + strlen(field), *e = q;
    if (e < end && *e == '-') e++;
    while (e < end && *e >= '0' && *e <= '9') e++;
    return parse_int(q, e, out);
}

/* One number of an update, advancing *pp past it and past the following `sep`. */
static bool next_num(const uint8_t **pp, const uint8_t *end, char sep, int64_t *out) {
    const uint8_t *p = *pp, *e = p;
    if (e < end && *e == '-') e++;
    while (e < end && *e >= '0' && *e <= '9') e++;
    if (e >= end || *e != sep || !parse_int(p, e, out)) return false;
    *pp = e + 1;
    return true;
}

/* ----------------------------------------------------------------- Watcher */

static void pixels(Sock *s, const uint8_t *p, size_t n) {
    double now = now_wall();
    const uint8_t *end = p + n, *open = memmem(p, n, "[[", 2), *tail;
    int64_t first, last;
    /* The Python code raises on a malformed frame, and asyncio then drops the
     * connection: do the same. */
    if (!open || !int_to_comma(open + 2, end, &first)) goto bad;
    tail = memrchr(p, '[', n);
    if (!int_to_comma(tail + 1, end, &last)) goto bad;
    int64_t count = 1;
    for (const uint8_t *q = p; (q = memchr(q, ']', (size_t)(end - q))) != NULL; q++)
        if (end - q >= 3 && q[1] == ',' && q[2] == '[') count++;
    if (s->has_last) {
        if (first > s->last + 1)
            s->gaps++;
        else if (first <= s->last)
            s->repeats++;
    }
    if (last - first + 1 != count) s->gaps++;
    s->last = last;
    s->has_last = true;
    s->received += count;
    s->frames++;
    if (s->sampled && have_t0) { /* "updates":[[seq,x,y,color],...] */
        const uint8_t *q = open + 1;
        int64_t seq, x, y, color;
        while (q < end && *q == '[') {
            q++;
            if (!next_num(&q, end, ',', &seq) || !next_num(&q, end, ',', &x) ||
                !next_num(&q, end, ',', &y) || !next_num(&q, end, ']', &color))
                break;
            if (nlat == caplat) {
                caplat = caplat ? caplat * 2 : 65536;
                lat = xrealloc(lat, caplat * sizeof *lat);
            }
            lat[nlat++] = now - (t0 + (double)(y * job.width + x) / job.rate);
            if (q >= end || *q != ',') break;
            q++;
        }
    }
    return;
bad:
    sock_close(s);
}

static void watcher_message(Sock *s, const uint8_t *p, size_t n) {
    int64_t seq;
    if (starts(p, n, PIXELS, sizeof PIXELS - 1)) {
        pixels(s, p, n);
    } else if (starts(p, n, HELLO, sizeof HELLO - 1) && json_int(p, n, "\"seq\":", &seq)) {
        s->hello = s->last = seq;
        s->has_last = true;
    }
}

/* ------------------------------------------------------- Replies, senders */

static void send_place(Sock *s, long x, long y, long color) {
    char text[128];
    int n = snprintf(text, sizeof text, "{\"type\":\"place\",\"x\":%ld,\"y\":%ld,\"color\":%ld}",
                     x, y, color);
    send_text(s, text, (size_t)n);
}

/* Placement i: pixel (i % width, (i // width) % height), colour i % 15 + 1, then
 * wait for its answer until max(0.1, stop - now). */
static void place_send(Sock *s, long i) {
    s->run = RUN_ANSWER;
    double now = now_wall();
    arm(s, now + (stop_at - now > 0.1 ? stop_at - now : 0.1));
    send_place(s, i % job.width, (i / job.width) % job.height, i % 15 + 1);
}

/* _place_on_schedule's run(k), from where it stands until it next waits. */
static void place_step(Sock *s) {
    s->run = RUN_STEP;
    while (s->j < s->mine) {
        long i = job.offset + job.stride * (s->k + s->j * nopened); /* mine[k::len] */
        s->j++;
        double now = now_wall();
        if (now > stop_at) {
            s->unsent++;
            continue;
        }
        double delay = t0 + (double)i / job.rate - now;
        if (delay > 0) {
            s->pending = i;
            s->run = RUN_TIMER;
            arm(s, t0 + (double)i / job.rate);
            return;
        }
        if (-delay > s->late) s->late = -delay;
        place_send(s, i);
        return;
    }
    run_end(s);
}

/* _ingest_closed_loop's run(k): a random place while time remains. */
static void ingest_step(Sock *s) {
    s->run = RUN_STEP;
    double now = now_wall();
    if (now >= end_at) {
        run_end(s);
        return;
    }
    long x = mt_randrange(s->rng, job.width), y = mt_randrange(s->rng, job.height);
    long c = mt_randrange(s->rng, 16);
    s->run = RUN_ANSWER;
    arm(s, now + INGEST_TIMEOUT);
    send_place(s, x, y, c);
}

static void add_code(const uint8_t *p, size_t n) {
    if (n >= sizeof codes[0].name) n = sizeof codes[0].name - 1;
    for (int i = 0; i < ncodes; i++)
        if (strlen(codes[i].name) == n && memcmp(codes[i].name, p, n) == 0) {
            codes[i].count++;
            return;
        }
    if (ncodes == (int)(sizeof codes / sizeof codes[0])) return;
    memcpy(codes[ncodes].name, p, n);
    codes[ncodes].name[n] = 0;
    codes[ncodes++].count = 1;
}

static void replies_message(Sock *s, const uint8_t *p, size_t n) {
    if (starts(p, n, PIXELS, sizeof PIXELS - 1)) return;
    if (starts(p, n, ACCEPTED, sizeof ACCEPTED - 1)) {
        int64_t seq;
        s->accepted++;
        if (json_int(p, n, "\"seq\":", &seq) && seq > s->max_seq) s->max_seq = seq;
    } else if (starts(p, n, REJECTED, sizeof REJECTED - 1)) {
        s->rejected++;
        const uint8_t *f = memmem(p, n, "\"code\":\"", 8), *end = p + n;
        if (f) {
            const uint8_t *q = f + 8, *e = q;
            while (e < end && *e != '"') e += *e == '\\' ? 2 : 1;
            add_code(q, (size_t)((e < end ? e : end) - q));
        } else {
            add_code((const uint8_t *)"null", 4);
        }
    } else {
        return;
    }
    if (s->run == RUN_ANSWER) {
        disarm(s);
        if (job.role == PLACE)
            place_step(s);
        else
            ingest_step(s);
    }
}

/* ------------------------------------------------------------------ frames */

static uint8_t rbuf[READ_SIZE];

static void on_message(Sock *s, const uint8_t *p, size_t n) {
    if (job.role == WATCH)
        watcher_message(s, p, n);
    else
        replies_message(s, p, n);
}

/* Parse what has arrived: the handshake's answer, then whole server frames
 * (unmasked; 7, 16 and 64-bit lengths). Returns how many bytes were used, or
 * -1 if the socket was closed. */
static long consume(Sock *s, uint8_t *buf, size_t len) {
    size_t used = 0;
    if (s->state == HANDSHAKE) {
        const uint8_t *end = memmem(buf, len, "\r\n\r\n", 4);
        if (!end) return 0;
        bool ok = memmem(buf, len < 12 ? len : 12, " 101", 4) != NULL;
        if (!ok) {
            sock_close(s);
            return -1;
        }
        used = (size_t)(end - buf) + 4;
        handshake_done(s);
    }
    while (len - used >= 2) {
        uint8_t *f = buf + used;
        uint64_t length = f[1] & 0x7F;
        size_t start = 2;
        if (length == 126) {
            if (len - used < 4) break;
            length = (uint64_t)f[2] << 8 | f[3];
            start = 4;
        } else if (length == 127) {
            if (len - used < 10) break;
            length = 0;
            for (int b = 0; b < 8; b++) length = length << 8 | f[2 + b];
            start = 10;
        }
        if (length > MAX_FRAME) {
            sock_close(s);
            return -1;
        }
        if (len - used < start + length) break;
        uint8_t opcode = f[0] & 0x0F, *payload = f + start;
        used += start + (size_t)length;
        if (opcode == 1) {
            on_message(s, payload, (size_t)length);
        } else if (opcode == 9) { /* daphne's keepalive ping: answer as browsers do */
            send_frame(s, 0x8A, payload, (size_t)length);
        } else if (opcode == 8) {
            if (length >= 2) s->close_code = payload[0] << 8 | payload[1];
            sock_close(s);
            return -1;
        }
        if (s->state != OPEN) return -1;
    }
    return (long)used;
}

static void on_readable(Sock *s) {
    for (;;) {
        ssize_t r = recv(s->fd, rbuf, sizeof rbuf, 0);
        if (r == 0) {
            sock_close(s); /* connection lost */
            return;
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) sock_close(s);
            return;
        }
        uint8_t *buf = rbuf;
        size_t len = (size_t)r;
        if (s->inlen) { /* a partial frame waits: append, parse from the socket's buffer */
            if (s->inlen + len > s->incap) {
                s->incap = (s->inlen + len) * 2;
                s->in = xrealloc(s->in, s->incap);
            }
            memcpy(s->in + s->inlen, rbuf, len);
            s->inlen += len;
            buf = s->in;
            len = s->inlen;
        }
        long used = consume(s, buf, len);
        if (used < 0) return;
        size_t rest = len - (size_t)used;
        if (buf == s->in) {
            memmove(s->in, s->in + used, rest);
        } else if (rest) {
            if (rest > s->incap) {
                s->incap = rest * 2 > 4096 ? rest * 2 : 4096;
                s->in = xrealloc(s->in, s->incap);
            }
            memcpy(s->in, rbuf + used, rest);
        }
        s->inlen = rest;
        if ((size_t)r < sizeof rbuf) return; /* level-triggered: epoll says if more */
    }
}

/* --------------------------------------------------------------- the loop */

static char stdin_buf[4096];
static size_t stdin_len;
static bool stdin_eof;

/* One line from stdin (blocking); NULL at end of input. */
static char *stdin_line(void) {
    for (;;) {
        char *nl = memchr(stdin_buf, '\n', stdin_len);
        if (nl) {
            static char line[sizeof stdin_buf];
            size_t n = (size_t)(nl - stdin_buf);
            memcpy(line, stdin_buf, n);
            line[n] = 0;
            memmove(stdin_buf, nl + 1, stdin_len - n - 1);
            stdin_len -= n + 1;
            return line;
        }
        if (stdin_eof || stdin_len == sizeof stdin_buf) return NULL;
        ssize_t r = read(0, stdin_buf + stdin_len, sizeof stdin_buf - stdin_len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            stdin_eof = true;
            return NULL;
        }
        stdin_len += (size_t)r;
    }
}

static void on_stdin(void) { /* readable: the parent said GO (or went away) */
    char *line = stdin_line();
    if (!line) die("stdin closed before GO");
    if (strncmp(line, "GO ", 3) != 0) die("expected GO <t0> on stdin");
    t0 = strtod(line + 3, NULL);
    have_t0 = true;
    epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
}

static void fire_timers(void) {
    double now = now_wall();
    while (hlen && heap[0].when <= now) {
        Timer t = heap_pop();
        Sock *s = &socks[t.sock];
        if (t.gen != s->gen) continue; /* cancelled or re-armed */
        s->gen++;
        if (s->state == CONNECTING || s->state == HANDSHAKE) {
            sock_close(s); /* no answer to the upgrade in time */
        } else if (s->state == OPEN && s->run == RUN_TIMER) {
            place_send(s, s->pending);
        } else if (s->state == OPEN && s->run == RUN_ANSWER) {
            run_end(s); /* TimeoutError: the Python coroutine returns */
        }
    }
}

/* Wait for sockets and timers, at most until `until` (0: no limit), and handle them. */
static void loop_once(double until) {
    static struct epoll_event events[1024];
    fire_timers();
    while (hlen && heap[0].gen != socks[heap[0].sock].gen) heap_pop(); /* stale */
    double next = until;
    if (hlen && (next == 0 || heap[0].when < next)) next = heap[0].when;
    int timeout = -1;
    if (next != 0) {
        double ms = (next - now_wall()) * 1e3; /* round up, as asyncio does */
        timeout = ms <= 0 ? 0 : ms > 1e9 ? 1000000000 : (int)ms + ((double)(int)ms < ms);
    }
    int n = epoll_wait(ep, events, 1024, timeout);
    for (int e = 0; e < n; e++) {
        uint32_t tag = events[e].data.u32, ev = events[e].events;
        if (tag == STDIN_TAG) {
            on_stdin();
            continue;
        }
        Sock *s = &socks[tag];
        if (s->state == CONNECTING) {
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err ||
                (ev & (EPOLLERR | EPOLLHUP))) {
                sock_close(s);
                continue;
            }
            if (ev & EPOLLOUT) on_connected(s);
            continue;
        }
        if (s->state != HANDSHAKE && s->state != OPEN) continue; /* closed meanwhile */
        if ((ev & EPOLLOUT) && s->outlen) flush_out(s);
        if (s->fd >= 0 && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(s);
    }
    fire_timers();
}

/* ------------------------------------------------------------------ report */

static void put_double(double x) { /* shortest repr-like form Python reads back as float */
    char b[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, x);
        if (strtod(b, NULL) == x) break;
    }
    fputs(b, stdout);
    if (!strpbrk(b, ".eEn")) fputs(".0", stdout);
}

static void report(double cpu_used, double cpu_connect) {
    static const char *names[] = {"watch", "place", "ingest"};
    long closed_by_server = 0;
    for (long k = 0; k < nopened; k++) closed_by_server += socks[opened[k]].close_code != 0;
    printf("{\"role\":\"%s\",\"sockets\":%ld,\"failures\":%ld,\"cpu\":", names[job.role],
           nopened, failures);
    put_double(cpu_used);
    printf(",\"cpu_connect\":");
    put_double(cpu_connect);
    printf(",\"closed_by_server\":%ld", closed_by_server);
    if (job.role == WATCH) {
        int64_t frames = 0, gaps = 0, repeats = 0;
        printf(",\"received\":[");
        for (long k = 0; k < nopened; k++) {
            Sock *s = &socks[opened[k]];
            printf(k ? ",%lld" : "%lld", (long long)s->received);
            frames += s->frames;
            gaps += s->gaps;
            repeats += s->repeats;
        }
        printf("],\"hello\":[");
        for (long k = 0; k < nopened; k++)
            printf(k ? ",%lld" : "%lld", (long long)socks[opened[k]].hello);
        printf("],\"frames\":%lld,\"gaps\":%lld,\"repeats\":%lld,\"latencies\":[",
               (long long)frames, (long long)gaps, (long long)repeats);
        /* %.9g: far below time.time()'s own resolution, and a third of the bytes */
        for (size_t i = 0; i < nlat; i++) printf(i ? ",%.9g" : "%.9g", lat[i]);
        printf("]}\n");
    } else {
        int64_t accepted = 0, rejected = 0, max_seq = 0, unsent = 0;
        double late = 0.0;
        for (long k = 0; k < nopened; k++) {
            Sock *s = &socks[opened[k]];
            accepted += s->accepted;
            rejected += s->rejected;
            unsent += s->unsent;
            if (s->max_seq > max_seq) max_seq = s->max_seq;
            if (s->late > late) late = s->late;
        }
        printf(",\"accepted\":%lld,\"rejected\":%lld,\"codes\":{", (long long)accepted,
               (long long)rejected);
        for (int i = 0; i < ncodes; i++)
            printf("%s\"%s\":%ld", i ? "," : "", codes[i].name, codes[i].count);
        printf("},\"max_seq\":%lld,\"late\":", (long long)max_seq);
        put_double(late);
        printf(",\"unsent\":%lld,\"window\":", (long long)unsent);
        put_double(job.seconds);
        printf("}\n");
    }
    fflush(stdout);
}

/* -------------------------------------------------------------------- main */

int main(int argc, char **argv) {
    double cpu0 = cpu_seconds();
    long ncookies = -1;
    const char *role = NULL;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[++i] : NULL;
        if (!value) usage();
        if (!strcmp(flag, "--role")) role = value;
        else if (!strcmp(flag, "--host")) job.host = value;
        else if (!strcmp(flag, "--port")) job.port = value;
        else if (!strcmp(flag, "--path")) job.path = value;
        else if (!strcmp(flag, "--count")) job.count = atol(value);
        else if (!strcmp(flag, "--cookies")) ncookies = atol(value);
        else if (!strcmp(flag, "--sample")) job.sample = atol(value);
        else if (!strcmp(flag, "--rate")) job.rate = strtod(value, NULL);
        else if (!strcmp(flag, "--width")) job.width = atol(value);
        else if (!strcmp(flag, "--height")) job.height = atol(value);
        else if (!strcmp(flag, "--seconds")) job.seconds = strtod(value, NULL);
        else if (!strcmp(flag, "--drain")) job.drain = strtod(value, NULL);
        else if (!strcmp(flag, "--stride")) job.stride = atol(value);
        else if (!strcmp(flag, "--offset")) job.offset = atol(value);
        else if (!strcmp(flag, "--inflight")) job.inflight = atol(value);
        else usage();
    }
    if (!role || !job.host || !job.port || !job.path) usage();
    if (!strcmp(role, "watch")) job.role = WATCH;
    else if (!strcmp(role, "place")) job.role = PLACE;
    else if (!strcmp(role, "ingest")) job.role = INGEST;
    else usage();
    if (job.width <= 0 || job.height <= 0 || job.stride <= 0 || job.inflight <= 0 ||
        !(job.rate > 0))
        usage();

    struct rlimit rl; /* raise_fd_limit(): 10,000 sockets and more */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    if (getrandom(&prng_state, sizeof prng_state, 0) != sizeof prng_state)
        prng_state = (uint64_t)now_wall() ^ (uint64_t)getpid() << 32;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);

    nsocks = job.role == WATCH ? job.count : ncookies;
    if (nsocks < 0) usage();
    socks = calloc((size_t)nsocks + 1, sizeof *socks);
    opened = calloc((size_t)nsocks + 1, sizeof *opened);
    if (!socks || !opened) die("out of memory");
    for (long i = 0; i < nsocks; i++) {
        Sock *s = &socks[i];
        s->fd = -1;
        s->sampled = job.role == WATCH && job.sample > 0 && i % job.sample == 0;
        if (job.role != WATCH) {
            char *line = stdin_line();
            if (!line) die("fewer cookies on stdin than --cookies says");
            s->cookie = strdup(line);
        }
    }

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = getaddrinfo(job.host, job.port, &hints, &addr);
    if (rc != 0) { /* as in Python: every socket fails, the run goes on */
        fprintf(stderr, "wsload: %s:%s: %s\n", job.host, job.port, gai_strerror(rc));
        addr = NULL;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1 failed");

    /* _open_many: every socket tried, at most --inflight at once */
    fill_connects();
    while (in_flight > 0 || next_start < nsocks) loop_once(0);
    printf("READY %ld %ld\n", nopened, failures);
    fflush(stdout);

    /* the sockets keep being served (pings, hello) while the parent waits for go */
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    if (memchr(stdin_buf, '\n', stdin_len))
        on_stdin();
    else if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev) < 0)
        die("cannot watch stdin");
    while (!have_t0) loop_once(0);
    double cpu_start = cpu_seconds();

    if (job.role == WATCH) {
        double end = t0 + job.seconds + job.drain;
        while (now_wall() < end) loop_once(end);
    } else if (job.role == PLACE) {
        long total = (long)(job.rate * job.seconds);
        nmine = job.offset < total ? (total - job.offset + job.stride - 1) / job.stride : 0;
        stop_at = t0 + job.seconds + 5.0; /* placements this late are not sent at all */
        for (long k = 0; k < nopened; k++) {
            Sock *s = &socks[opened[k]];
            s->k = k;
            s->mine = k < nmine ? (nmine - k + nopened - 1) / nopened : 0;
            if (s->state != OPEN) continue; /* closed by the server since: nothing to send */
            active++;
            place_step(s);
        }
        while (active > 0) loop_once(0);
    } else {
        end_at = t0 + job.seconds;
        while (now_wall() < t0) loop_once(t0);
        for (long k = 0; k < nopened; k++) {
            Sock *s = &socks[opened[k]];
            if (s->state != OPEN) continue;
            s->rng = xrealloc(NULL, sizeof *s->rng);
            mt_seed(s->rng, (uint32_t)k); /* random.Random(k) */
            active++;
            ingest_step(s);
        }
        while (active > 0) loop_once(0);
    }

    double cpu_used = cpu_seconds() - cpu_start;
    for (long i = 0; i < nsocks; i++)
        if (socks[i].fd >= 0) close(socks[i].fd);
    report(cpu_used, cpu_start - cpu0);
    return 0;
}
