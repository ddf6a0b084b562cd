/* A load process's clients in C: WebSocket (plain or Engine.IO) and SSE clients to one server,
 * recording what they receive, at about two thirds of what the same clients cost in Python.
 *
 * Why: at 25,000 connections and 10 events/s the Python load clients took as much of the two
 * cores as the server did (4-5 us of CPU per delivery, most of it in Python per read), so
 * the point measured the machine, not the server. These clients do the same work (the same
 * requests, frames, pongs, SSE blocks and `"b":"<seq>:<sent us>"` marks as bench/load.py) with
 * one epoll loop and one shared read buffer.
 *
 * bench/cload.py builds this file with the system C compiler and drives it:
 *   cload SETUP      SETUP: a line `<clients> <port> <concurrency> <timeout ms> <greeting 0|1>`,
 *                    then per client a line `<w|e|s> <source address> <request bytes>` and the
 *                    request itself (w: WebSocket, e: Engine.IO over WebSocket, s: SSE)
 * then commands on stdin, one per line, each answered with one JSON line on stdout:
 *   connect          open every client, `concurrency` handshakes at a time
 *   reset FIRST      count afresh from event FIRST on, on the same connections
 *   finish LAST S    wait until every open client has event LAST, or nothing arrived for 5 s,
 *                    or S seconds passed; then 0.2 s more; then the counts
 *   exit             (or end of input) close everything and exit
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUCKETS 4096       /* log buckets 1 % wide, as bench/stats.py: int(ln(us) * 100) */
#define SCRATCH (4 << 20)  /* one read, with a client's unparsed tail in front of it */
#define QUIET_SECONDS 5.0
#define STDIN_TAG UINT32_MAX
#define DISORDER_MAX 20
#define MISSING_MAX 50

enum kind { WS, SSE, KINDS };
static const char *KIND_NAMES[KINDS] = {"websocket", "sse"};
enum state { WAITING, CONNECTING, HANDSHAKE, OPEN, DONE };

typedef struct {
    int fd;
    uint8_t kind, engineio, state, upgraded, established, closed;
    struct in_addr source;
    char *request;
    int request_len, request_sent;
    char *tail; /* bytes of an incomplete frame or SSE block */
    int tail_len;
    uint8_t *seen;
    int64_t seen_cap, last, received, duplicated, out_of_order;
    double deadline;
} client_t;

typedef struct {
    int64_t counts[BUCKETS];
    int64_t total;
    double max_us;
} hist_t;

static client_t *clients;
static int nclients, port, concurrency, greeting;
static double timeout_seconds;
static int epfd;
static char *scratch;
static hist_t hists[KINDS];
static int64_t *worst;
static int64_t worst_cap;
static int64_t disorder[DISORDER_MAX][3];
static int ndisorder;
static int64_t first_seq = 1;

/* why handshakes failed: counted, and the first unexpected status line kept */
enum reason { REFUSED, STATUS, CLOSED, TIMEOUT, REASONS };
static const char *REASON_NAMES[REASONS] = {"refused", "status", "closed", "timeout"};
static int failures[REASONS];
static char first_status[80];
/* connect state */
static int connecting, next_client, inflight, opened, failed;
static double connect_started, connect_finished, last_established[KINDS];
static int opened_kind[KINDS];
/* finish state */
static int finishing;
static int64_t finish_last, progress;
static double finish_deadline, quiet_since, grace_until;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int64_t now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static void *grow(void *p, size_t size) {
    void *q = realloc(p, size);
    if (!q) {
        perror("cload: realloc");
        exit(2);
    }
    return q;
}

static void record(client_t *c, int64_t seq, int64_t latency) {
    if (seq < 0 || seq > (1 << 30))
        return;
    if (seq >= c->seen_cap) {
        int64_t cap = seq + 256;
        c->seen = grow(c->seen, cap);
        memset(c->seen + c->seen_cap, 0, cap - c->seen_cap);
        c->seen_cap = cap;
    }
    if (c->seen[seq]) {
        c->duplicated++;
        return;
    }
    c->seen[seq] = 1;
    c->received++;
    if (seq < c->last) {
        c->out_of_order++;
        if (ndisorder < DISORDER_MAX) {
            disorder[ndisorder][0] = seq;
            disorder[ndisorder][1] = c->last;
            disorder[ndisorder][2] = c->received;
            ndisorder++;
        }
    } else {
        c->last = seq;
    }
    double us = latency < 1 ? 1.0 : (double)latency;
    int bucket = us > 1.0 ? (int)(log(us) * 100) : 0;
    if (bucket >= BUCKETS)
        bucket = BUCKETS - 1;
    hist_t *h = &hists[c->kind];
    h->counts[bucket]++;
    h->total++;
    if (us > h->max_us)
        h->max_us = us;
    if (seq >= worst_cap) {
        int64_t cap = seq * 2 + 1024;
        worst = grow(worst, cap * sizeof *worst);
        memset(worst + worst_cap, 0, (cap - worst_cap) * sizeof *worst);
        worst_cap = cap;
    }
    if (latency > worst[seq])
        worst[seq] = latency;
}

static int64_t digits(const char **p, const char *end) {
    int64_t n = 0;
    const char *q = *p;
    while (q < end && *q >= '0' && *q <= '9')
        n = n * 10 + (*q++ - '0');
    if (q == *p)
        return -1;
    *p = q;
    return n;
}

/* Every `"b": ?"<seq>:<sent>"` in [p, end); 1 when there was one. */
static int scan(client_t *c, const char *p, const char *end, int64_t now) {
    int found = 0;
    while (p < end) {
        const char *m = memmem(p, end - p, "\"b\":", 4);
        if (!m)
            break;
        const char *q = m + 4;
        p = q;
        if (q < end && *q == ' ')
            q++;
        if (q >= end || *q++ != '"')
            continue;
        int64_t seq = digits(&q, end);
        if (seq < 0 || q >= end || *q++ != ':')
            continue;
        int64_t sent = digits(&q, end);
        if (sent < 0 || q >= end || *q != '"')
            continue;
        p = q + 1;
        found = 1;
        record(c, seq, now - sent);
    }
    return found;
}

static void start_next(void);

static void finish_handshake(client_t *c, int ok) {
    if (c->state == OPEN || c->state == DONE)
        return;
    inflight--;
    if (ok) {
        c->state = OPEN;
        c->established = 1;
        opened++;
        opened_kind[c->kind]++;
        last_established[c->kind] = now_s();
    } else {
        c->state = DONE;
        failed++;
        if (c->fd >= 0) {
            close(c->fd);
            c->fd = -1;
        }
    }
    if (connecting)
        start_next();
}

static void fail(client_t *c, enum reason why) {
    if (c->state == OPEN || c->state == DONE)
        return;
    failures[why]++;
    finish_handshake(c, 0);
}

static void drop(client_t *c) {
    fail(c, CLOSED); /* before the handshake ended: a failure */
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->closed = 1;
    c->state = DONE;
}

static void send_bytes(client_t *c, const char *data, size_t len) {
    if (c->fd >= 0)
        (void)send(c->fd, data, len, MSG_NOSIGNAL); /* a short pong: the socket buffer has room */
}

/* A short client frame (final, `opcode`), masked with a zero key, which leaves the payload as it is. */
static void masked_frame(client_t *c, uint8_t opcode, const char *payload, uint8_t len) {
    char frame[6 + 125] = {(char)(0x80 | opcode), (char)(0x80 | len), 0, 0, 0, 0};
    memcpy(frame + 6, payload, len);
    send_bytes(c, frame, 6 + len);
}

static void text_frame(client_t *c, const char *p, uint64_t len, int64_t now) {
    if (!c->engineio) {
        if (!scan(c, p, p + len, now) && c->state == HANDSHAKE)
            finish_handshake(c, 1); /* the greeting, or another per-connection message */
        return;
    }
    if (len >= 2 && p[0] == '4' && p[1] == '2')
        scan(c, p, p + len, now);
    else if (len >= 1 && p[0] == '2')
        masked_frame(c, 0x1, "3", 1);
    else if (len >= 2 && p[0] == '4' && p[1] == '0')
        finish_handshake(c, 1);
    else if (len >= 1 && p[0] == '0')
        masked_frame(c, 0x1, "40", 2);
    else if ((len >= 2 && p[0] == '4' && p[1] == '4') || (len >= 1 && p[0] == '1'))
        drop(c);
}

/* Parses buf[0, len); returns how much was consumed, or -1 when the client was dropped. */
static int64_t on_websocket(client_t *c, const unsigned char *buf, int64_t len, int64_t now) {
    int64_t pos = 0;
    while (len - pos >= 2) {
        int opcode = buf[pos] & 0x0F;
        uint64_t size = buf[pos + 1] & 0x7F;
        int head = 2;
        if (size == 126) {
            if (len - pos < 4)
                break;
            size = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            head = 4;
        } else if (size == 127) {
            if (len - pos < 10)
                break;
            size = 0;
            for (int i = 2; i < 10; i++)
                size = (size << 8) | buf[pos + i];
            head = 10;
        }
        if ((uint64_t)(len - pos - head) < size)
            break;
        const char *payload = (const char *)buf + pos + head;
        if (opcode == 0x1) {
            text_frame(c, payload, size, now);
            if (c->state == DONE)
                return -1;
        } else if (opcode == 0x9 && size < 126) {
            masked_frame(c, 0xA, payload, (uint8_t)size); /* the pong carries the ping's payload */
        } else if (opcode == 0x8) {
            drop(c);
            return -1;
        }
        pos += head + size;
    }
    return pos;
}

static int64_t on_sse(client_t *c, const char *buf, int64_t len, int64_t now) {
    const char *end = NULL;
    for (const char *p = buf + len - 1; p > buf; p--) /* the last complete block's end */
        if (p[0] == '\n' && p[-1] == '\n') {
            end = p - 1;
            break;
        }
    if (!end)
        return 0;
    if (greeting && c->state == HANDSHAKE && memmem(buf, end - buf, "\"connected\"", 11))
        finish_handshake(c, 1);
    scan(c, buf, end, now);
    return end + 2 - buf;
}

static void on_readable(client_t *c) {
    int64_t now = now_us();
    int64_t held = c->tail_len;
    if (held)
        memcpy(scratch, c->tail, held);
    ssize_t got = recv(c->fd, scratch + held, SCRATCH - held, 0);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
        drop(c);
        return;
    }
    if (got < 0)
        return;
    int64_t len = held + got;
    const char *buf = scratch;
    if (!c->upgraded) { /* the status line and headers, once */
        const char *head_end = memmem(buf, len, "\r\n\r\n", 4);
        if (!head_end)
            goto keep;
        int ok = c->kind == WS ? len >= 12 && !memcmp(buf, "HTTP/1.1 101", 12)
                               : len >= 12 && (!memcmp(buf, "HTTP/1.1 200", 12) || !memcmp(buf, "HTTP/1.0 200", 12));
        if (!ok) {
            if (!first_status[0]) {
                const char *eol = memmem(buf, len, "\r\n", 2);
                snprintf(first_status, sizeof first_status, "%.*s", (int)(eol - buf), buf);
            }
            fail(c, STATUS);
            drop(c);
            return;
        }
        c->upgraded = 1;
        int64_t skip = head_end + 4 - buf;
        buf += skip;
        len -= skip;
        if (!greeting && !c->engineio)
            finish_handshake(c, 1);
    }
    {
        int64_t used = c->kind == WS ? on_websocket(c, (const unsigned char *)buf, len, now) : on_sse(c, buf, len, now);
        if (used < 0)
            return;
        buf += used;
        len -= used;
    }
keep:
    if (len > SCRATCH / 2) { /* no frame or block is this long: a broken stream */
        drop(c);
        return;
    }
    if (len)
        memmove(c->tail = grow(c->tail, len), buf, len);
    c->tail_len = (int)len;
}

static void on_writable(client_t *c) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t size = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &size);
        if (err) {
            fail(c, REFUSED);
            return;
        }
        c->state = HANDSHAKE;
    }
    while (c->request_sent < c->request_len) {
        ssize_t n = send(c->fd, c->request + c->request_sent, c->request_len - c->request_sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            fail(c, CLOSED);
            return;
        }
        c->request_sent += n;
    }
    free(c->request);
    c->request = NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - clients)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void start(client_t *c) {
    c->deadline = now_s() + timeout_seconds;
    inflight++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail(c, REFUSED);
        return;
    }
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_addr = c->source, .sin_port = 0};
    struct sockaddr_in remote = {.sin_family = AF_INET, .sin_port = htons(port)};
    remote.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(c->fd, (struct sockaddr *)&local, sizeof local) < 0 ||
        (connect(c->fd, (struct sockaddr *)&remote, sizeof remote) < 0 && errno != EINPROGRESS)) {
        fail(c, REFUSED);
        return;
    }
    c->state = CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(c - clients)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void start_next(void) {
    while (inflight < concurrency && next_client < nclients)
        start(&clients[next_client++]);
    if (connecting && next_client >= nclients && inflight == 0) {
        connecting = 0;
        connect_finished = now_s();
        printf("{\"opened\": %d, \"failed\": %d, \"started\": %.6f, \"finished\": %.6f, \"pid\": %d, \"by_kind\": {",
               opened, failed, connect_started, connect_finished, (int)getpid());
        for (int k = 0; k < KINDS; k++)
            printf("\"%s\": [%d, %.6f], ", KIND_NAMES[k], opened_kind[k],
                   opened_kind[k] ? last_established[k] : connect_started);
        printf("\"poll\": [0, %.6f]}, \"failures\": {", connect_started);
        for (int r = 0; r < REASONS; r++)
            printf("%s\"%s\": %d", r ? ", " : "", REASON_NAMES[r], failures[r]);
        printf("}, \"first_status\": \"");
        for (const char *q = first_status; *q; q++)
            if (*q >= 32 && *q < 127 && *q != '"' && *q != '\\')
                putchar(*q);
        printf("\"}\n");
        fflush(stdout);
    }
}

static void check_timeouts(void) {
    double t = now_s();
    for (int i = 0; i < next_client; i++) {
        client_t *c = &clients[i];
        if ((c->state == CONNECTING || c->state == HANDSHAKE) && t > c->deadline)
            fail(c, TIMEOUT);
    }
}

static int64_t lost(client_t *c) {
    int64_t want = finish_last - first_seq + 1 - c->received;
    return want > 0 ? want : 0;
}

static void report(void) {
    printf("{");
    for (int k = 0; k < KINDS; k++) {
        int64_t n = 0, received = 0, missing_total = 0, duplicated = 0, out_of_order = 0, disconnected = 0;
        int64_t missing_count = 0;
        printf("\"%s\": {\"missing\": {", KIND_NAMES[k]);
        /* up to MISSING_MAX events some client of this kind never got: how many clients each */
        int64_t *missing = NULL;
        int64_t span = finish_last - first_seq + 1;
        if (span > 0)
            missing = calloc(span, sizeof *missing);
        for (int i = 0; i < nclients; i++) {
            client_t *c = &clients[i];
            if (c->kind != k || !c->established)
                continue;
            n++;
            received += c->received;
            missing_total += lost(c);
            duplicated += c->duplicated;
            out_of_order += c->out_of_order;
            disconnected += c->closed;
            if (missing && lost(c) && missing_count < MISSING_MAX)
                for (int64_t seq = first_seq; seq <= finish_last; seq++)
                    if (seq >= c->seen_cap || !c->seen[seq]) {
                        if (!missing[seq - first_seq])
                            missing_count++;
                        missing[seq - first_seq]++;
                    }
        }
        const char *sep = "";
        for (int64_t s = 0; missing && s < span; s++)
            if (missing[s]) {
                printf("%s\"%lld\": %lld", sep, (long long)(s + first_seq), (long long)missing[s]);
                sep = ", ";
            }
        free(missing);
        hist_t *h = &hists[k];
        printf("}, \"clients\": %lld, \"received\": %lld, \"lost\": %lld, \"duplicated\": %lld, "
               "\"out_of_order\": %lld, \"disconnected\": %lld, \"total\": %lld, \"max_us\": %.1f, \"counts\": {",
               (long long)n, (long long)received, (long long)missing_total, (long long)duplicated,
               (long long)out_of_order, (long long)disconnected, (long long)h->total, h->max_us);
        sep = "";
        for (int b = 0; b < BUCKETS; b++)
            if (h->counts[b]) {
                printf("%s\"%d\": %lld", sep, b, (long long)h->counts[b]);
                sep = ", ";
            }
        printf("}}, ");
    }
    printf("\"worst\": {");
    const char *sep = "";
    for (int64_t seq = 0; seq < worst_cap; seq++)
        if (worst[seq]) {
            printf("%s\"%lld\": %lld", sep, (long long)seq, (long long)worst[seq]);
            sep = ", ";
        }
    printf("}, \"disorder\": [");
    for (int i = 0; i < ndisorder; i++)
        printf("%s[%lld, %lld, %lld]", i ? ", " : "", (long long)disorder[i][0], (long long)disorder[i][1],
               (long long)disorder[i][2]);
    printf("]}\n");
    fflush(stdout);
}

static int64_t total_received(void) {
    int64_t n = 0;
    for (int i = 0; i < nclients; i++)
        n += clients[i].received;
    return n;
}

static int everyone_has_last(void) {
    for (int i = 0; i < nclients; i++) {
        client_t *c = &clients[i];
        if (c->established && !c->closed && c->last < finish_last)
            return 0;
    }
    return 1;
}

static void check_finish(void) {
    double t = now_s();
    if (grace_until) {
        if (t >= grace_until) {
            finishing = 0;
            grace_until = 0;
            report();
        }
        return;
    }
    int done = t >= finish_deadline || everyone_has_last();
    if (!done) {
        int64_t received = total_received();
        if (received != progress) {
            progress = received;
            quiet_since = t;
        } else if (t - quiet_since > QUIET_SECONDS) {
            done = 1;
        }
    }
    if (done)
        grace_until = t + 0.2; /* a duplicate right behind the last event still counts */
}

static void reset(int64_t first) {
    first_seq = first;
    memset(hists, 0, sizeof hists);
    if (worst)
        memset(worst, 0, worst_cap * sizeof *worst);
    ndisorder = 0;
    for (int i = 0; i < nclients; i++)
        clients[i].received = clients[i].duplicated = clients[i].out_of_order = 0;
}

/* One command line; 0 to exit. */
static int command(char *line) {
    long long a = 0;
    double b = 0;
    if (!strcmp(line, "connect")) {
        connecting = 1;
        connect_started = now_s();
        start_next();
    } else if (sscanf(line, "reset %lld", &a) == 1) {
        reset(a);
        printf("true\n");
        fflush(stdout);
    } else if (sscanf(line, "finish %lld %lf", &a, &b) == 2) {
        finishing = 1;
        finish_last = a;
        finish_deadline = now_s() + b;
        progress = -1;
        quiet_since = now_s();
        grace_until = 0;
    } else {
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: cload SETUP\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    double timeout_ms = 0;
    if (!f || fscanf(f, "%d %d %d %lf %d", &nclients, &port, &concurrency, &timeout_ms, &greeting) != 5) {
        fprintf(stderr, "cload: bad setup file %s\n", argv[1]);
        return 2;
    }
    timeout_seconds = timeout_ms / 1000;
    clients = calloc(nclients ? nclients : 1, sizeof *clients);
    for (int i = 0; i < nclients; i++) {
        client_t *c = &clients[i];
        char kind, source[64];
        int len;
        if (fscanf(f, " %c %63s %d", &kind, source, &len) != 3 || fgetc(f) != '\n' || len <= 0 ||
            inet_pton(AF_INET, source, &c->source) != 1) {
            fprintf(stderr, "cload: bad client %d in %s\n", i, argv[1]);
            return 2;
        }
        c->fd = -1;
        c->kind = kind == 's' ? SSE : WS;
        c->engineio = kind == 'e';
        c->request = malloc(len);
        c->request_len = len;
        if (fread(c->request, 1, len, f) != (size_t)len) {
            fprintf(stderr, "cload: short request %d in %s\n", i, argv[1]);
            return 2;
        }
    }
    fclose(f);
    struct rlimit limit;
    if (!getrlimit(RLIMIT_NOFILE, &limit)) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    scratch = malloc(SCRATCH);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    char line[256];
    int line_len = 0, running = 1;
    double last_check = 0;
    struct epoll_event events[512];
    while (running) {
        int n = epoll_wait(epfd, events, 512, 100);
        for (int i = 0; i < n && running; i++) {
            uint32_t tag = events[i].data.u32;
            if (tag == STDIN_TAG) {
                ssize_t got = read(0, line + line_len, sizeof line - 1 - line_len);
                if (got <= 0) {
                    running = 0;
                    break;
                }
                line_len += got;
                char *nl;
                while (running && (nl = memchr(line, '\n', line_len))) {
                    *nl = 0;
                    running = command(line);
                    line_len -= nl + 1 - line;
                    memmove(line, nl + 1, line_len);
                }
                if (line_len >= (int)sizeof line - 1)
                    line_len = 0;
                continue;
            }
            client_t *c = &clients[tag];
            if (c->fd < 0)
                continue;
            if (events[i].events & EPOLLOUT)
                on_writable(c);
            if (c->fd >= 0 && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c->state >= HANDSHAKE)
                on_readable(c);
            else if (c->fd >= 0 && (events[i].events & (EPOLLHUP | EPOLLERR)))
                fail(c, REFUSED);
        }
        double t = now_s();
        if (t - last_check >= 0.1) { /* each check walks every client: ten times a second at most */
            last_check = t;
            if (connecting)
                check_timeouts();
            if (finishing)
                check_finish();
        }
    }
    for (int i = 0; i < nclients; i++)
        if (clients[i].fd >= 0)
            close(clients[i].fd);
    return 0;
}
