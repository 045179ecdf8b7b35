/* TFTP read load in C: bench/tftp_client.py's transfers, without the client being the bottleneck (the Python
 * one used more CPU than the servers it measured in the windowed workload). bench/tftp.py compiles it with
 * the system's cc into its work dir and runs it on the load CPU; the Python client stays for the tests and
 * as the fallback when there is no compiler.
 *
 *   tftp_load --server IP:PORT --file NAME [--count N] [--blksize B] [--windowsize W] [--tsize]
 *             [--timeout S] [--retries R] [--deadline S] [--dally S] [--expect PATH]
 *
 * N read requests (RFC 1350) at once, each from a socket (a TID) of its own, with the options asked for
 * (RFC 2347 OACK, 2348 blksize, 2349 tsize, 7440 windowsize: an ACK every W blocks, lock-step when the
 * server grants no window or W is 1). A transfer learns the server's TID from its first answer, answers
 * another TID with ERROR 5, refuses an OACK that grants more than asked or names an option not asked for
 * (ERROR 8), acknowledges the last block it has in order on a gap (RFC 7440 §4) and when nothing new comes
 * for --timeout seconds (the request again while there is no answer), and gives up after --retries of
 * those, sending the server an ERROR so it stops too. --deadline bounds the whole run the same way. With
 * --expect, every block is compared with the file at its offset and the length with the file's: a byte
 * that differs ends the transfer with an error. After its last block each transfer stays --dally seconds (not counted in its time)
 * to acknowledge the block again if the server resends it (RFC 1350 §6).
 *
 * Prints one JSON object: completed, failed, seconds (first request to last block), client_cpu_s (this
 * process's user + system time), retransmits (packets this client repeated), duplicates (blocks it already
 * had), and per transfer ok, bytes, seconds, blksize, windowsize, acks, verified, error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { RRQ = 1, DATA = 3, ACK = 4, ERROR = 5, OACK = 6 };
enum { WAITING, RECEIVING, DALLYING, DONE };
#define MAX_BLOCK 65464 /* RFC 2348 */
#define BATCH 16

struct transfer {
    int fd, state, ok, window, since_ack, gap_acked, tries, has_peer, verified;
    long blksize, expected, acks, tsize; /* expected: the next block wanted, from 1, not wrapped */
    long long bytes;
    struct sockaddr_in peer;
    uint8_t last[600];
    size_t last_len; /* the packet repeated on a timeout: the request, then the last ACK */
    double started, finished, due; /* due: when the timer fires (a retransmission, or the dally's end) */
    char error[160];
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static long retransmits, duplicates;
static double timeout = 1.0, dally = 3.0;

static void send_to_peer(struct transfer *t, const uint8_t *packet, size_t len, int remember) {
    if (sendto(t->fd, packet, len, 0, (struct sockaddr *)&t->peer, sizeof t->peer) < 0 && errno != EAGAIN && errno != ENOBUFS)
        snprintf(t->error, sizeof t->error, "sendto: %s", strerror(errno));
    if (remember) {
        memcpy(t->last, packet, len);
        t->last_len = len;
    }
}

static void send_ack(struct transfer *t, long block) {
    uint8_t ack[4] = {0, ACK, (uint8_t)((block >> 8) & 0xFF), (uint8_t)(block & 0xFF)};
    send_to_peer(t, ack, sizeof ack, 1);
    t->acks++;
    t->since_ack = 0;
}

static void send_error(int fd, const struct sockaddr_in *to, int code, const char *message) {
    uint8_t packet[200] = {0, ERROR, 0, (uint8_t)code};
    size_t len = 4 + (size_t)snprintf((char *)packet + 4, sizeof packet - 4, "%s", message) + 1;
    sendto(fd, packet, len, 0, (const struct sockaddr *)to, sizeof *to);
}

/* The transfer ends in failure; the server is told when it is known (its TID), so it frees the slot. */
__attribute__((format(printf, 3, 4))) static void fail(struct transfer *t, int code, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(t->error, sizeof t->error, format, args);
    va_end(args);
    if (t->has_peer && code >= 0) send_error(t->fd, &t->peer, code, t->error);
    t->state = DONE;
    t->ok = 0;
    t->finished = now();
}

/* Parses an OACK; 0 and the granted values, or -1 with the transfer failed (ERROR 8 sent). */
static int take_oack(struct transfer *t, const uint8_t *p, size_t len, long want_blksize, long want_window, int want_tsize) {
    const char *c = (const char *)p + 2, *end = (const char *)p + len;
    t->blksize = 512;
    t->window = 1;
    t->tsize = -1;
    while (c < end) {
        const char *name = c, *value = memchr(c, 0, (size_t)(end - c));
        if (!value || ++value >= end) { fail(t, 8, "malformed OACK"); return -1; }
        const char *stop = memchr(value, 0, (size_t)(end - value));
        if (!stop) { fail(t, 8, "malformed OACK"); return -1; }
        char *rest;
        long v = strtol(value, &rest, 10);
        if (rest != stop || v < 0) { fail(t, 8, "OACK: bad value for %.20s", name); return -1; }
        if (!strcasecmp(name, "blksize") && want_blksize) {
            if (v < 8 || v > want_blksize) { fail(t, 8, "OACK: blksize %ld not asked", v); return -1; }
            t->blksize = v;
        } else if (!strcasecmp(name, "windowsize") && want_window) {
            if (v < 1 || v > want_window) { fail(t, 8, "OACK: windowsize %ld not asked", v); return -1; }
            t->window = (int)v;
        } else if (!strcasecmp(name, "tsize") && want_tsize) {
            t->tsize = v;
        } else {
            fail(t, 8, "OACK: option %.20s not asked", name);
            return -1;
        }
        c = stop + 1;
    }
    return 0;
}

static int usage(const char *message) {
    fprintf(stderr, "tftp_load: %s\n", message);
    return 2;
}

int main(int argc, char **argv) {
    const char *server = NULL, *file = NULL, *expect = NULL;
    long count = 1, blksize = 0, window = 0;
    int tsize = 0, retries = 8;
    double deadline = 120;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--server")) server = v, i++;
        else if (!strcmp(a, "--file")) file = v, i++;
        else if (!strcmp(a, "--count")) count = atol(v), i++;
        else if (!strcmp(a, "--blksize")) blksize = atol(v), i++;
        else if (!strcmp(a, "--windowsize")) window = atol(v), i++;
        else if (!strcmp(a, "--tsize")) tsize = 1;
        else if (!strcmp(a, "--timeout")) timeout = atof(v), i++;
        else if (!strcmp(a, "--retries")) retries = atoi(v), i++;
        else if (!strcmp(a, "--deadline")) deadline = atof(v), i++;
        else if (!strcmp(a, "--dally")) dally = atof(v), i++;
        else if (!strcmp(a, "--expect")) expect = v, i++;
        else { fprintf(stderr, "tftp_load: unknown argument %s\n", a); return 2; }
    }
    if (!server || !file) return usage("--server IP:PORT and --file NAME are required");
    if (count < 1 || count > 10000) return usage("--count must be 1..10000");
    if (blksize && (blksize < 8 || blksize > MAX_BLOCK)) return usage("--blksize must be 8..65464");
    if (window < 0 || window > 65535) return usage("--windowsize must be 1..65535");
    if (timeout <= 0 || retries < 0 || deadline <= 0 || dally < 0) return usage("bad --timeout, --retries, --deadline or --dally");
    if (strlen(file) > 400) return usage("--file is too long");
    struct sockaddr_in to = {.sin_family = AF_INET};
    char host[64];
    const char *colon = strrchr(server, ':');
    if (!colon || (size_t)(colon - server) >= sizeof host) return usage("--server must be IP:PORT");
    memcpy(host, server, (size_t)(colon - server));
    host[colon - server] = 0;
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1 || atoi(colon + 1) <= 0 || atoi(colon + 1) > 65535)
        return usage("--server must be IP:PORT");
    to.sin_port = htons((uint16_t)atoi(colon + 1));

    const uint8_t *content = NULL;
    long long content_len = 0;
    if (expect) {
        int efd = open(expect, O_RDONLY);
        struct stat st;
        if (efd < 0 || fstat(efd, &st) < 0) { perror(expect); return 1; }
        content_len = st.st_size;
        if (content_len > 0) {
            content = mmap(NULL, (size_t)content_len, PROT_READ, MAP_PRIVATE, efd, 0);
            if (content == MAP_FAILED) { perror("mmap"); return 1; }
        }
        close(efd);
    }

    uint8_t request[600] = {0, RRQ};
    size_t request_len = 2;
    request_len += (size_t)sprintf((char *)request + request_len, "%s", file) + 1;
    request_len += (size_t)sprintf((char *)request + request_len, "octet") + 1;
    if (blksize) request_len += (size_t)sprintf((char *)request + request_len, "blksize%c%ld", 0, blksize) + 1;
    if (window) request_len += (size_t)sprintf((char *)request + request_len, "windowsize%c%ld", 0, window) + 1;
    if (tsize) request_len += (size_t)sprintf((char *)request + request_len, "tsize%c0", 0) + 1;

    int ep = epoll_create1(0);
    if (ep < 0) { perror("epoll_create1"); return 1; }
    struct transfer *ts = calloc((size_t)count, sizeof *ts);
    if (!ts) { perror("calloc"); return 1; }
    for (long i = 0; i < count; i++) {
        struct transfer *t = &ts[i];
        int buffer = 1 << 20;
        t->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (t->fd < 0) { perror("socket"); return 1; }
        setsockopt(t->fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, t->fd, &ev) < 0) { perror("epoll_ctl"); return 1; }
        t->blksize = 512;
        t->window = 1;
        t->tsize = -1;
        t->expected = 1;
        t->ok = 1;
    }

    static uint8_t rx[BATCH][MAX_BLOCK + 4 + 1];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    struct sockaddr_in from[BATCH];
    struct epoll_event events[256];
    double start = now(), end = start + deadline;
    for (long i = 0; i < count; i++) { /* every request at once, from its own TID */
        struct transfer *t = &ts[i];
        t->peer = to;
        t->started = now();
        send_to_peer(t, request, request_len, 1);
        t->due = t->started + timeout;
    }
    long active = count;
    while (active > 0) {
        double t0 = now(), next = end;
        if (t0 >= end) {
            for (long i = 0; i < count; i++)
                if (ts[i].state == WAITING || ts[i].state == RECEIVING)
                    fail(&ts[i], 0, "the run's deadline passed at block %ld", ts[i].expected);
                else if (ts[i].state == DALLYING) ts[i].state = DONE;
            break;
        }
        for (long i = 0; i < count; i++) { /* timers: repeat the last packet, give up after the retries */
            struct transfer *t = &ts[i];
            if (t->state == DONE) continue;
            if (t->due <= t0) {
                if (t->state == DALLYING) { t->state = DONE; active--; continue; }
                if (++t->tries > retries) {
                    fail(t, 0, "timed out after %d retries at block %ld", retries, t->expected);
                    active--;
                    continue;
                }
                if (t->state == RECEIVING) send_ack(t, (t->expected - 1) & 0xFFFF); /* all we have in order */
                else send_to_peer(t, t->last, t->last_len, 0);
                retransmits++;
                t->due = t0 + timeout;
            }
            if (t->due < next) next = t->due;
        }
        if (active == 0) break; /* the last ones just ended on their timers */
        int wait_ms = next - t0 < 1 ? (int)((next - t0) * 1000) + 1 : 1000;
        int n = epoll_wait(ep, events, sizeof events / sizeof events[0], wait_ms);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int e = 0; e < n; e++) {
            struct transfer *t = &ts[events[e].data.u64];
            for (;;) {
                for (int k = 0; k < BATCH; k++) {
                    iov[k] = (struct iovec){rx[k], sizeof rx[k]};
                    msgs[k].msg_hdr = (struct msghdr){.msg_name = &from[k], .msg_namelen = sizeof from[k],
                                                       .msg_iov = &iov[k], .msg_iovlen = 1};
                }
                int got = recvmmsg(t->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
                if (got <= 0) break;
                double at = now();
                for (int k = 0; k < got; k++) {
                    const uint8_t *p = rx[k];
                    size_t len = msgs[k].msg_len;
                    if (t->state == DONE) continue;
                    if (from[k].sin_addr.s_addr != to.sin_addr.s_addr) continue;
                    if (!t->has_peer) {
                        t->peer = from[k];
                        t->has_peer = 1;
                    } else if (from[k].sin_port != t->peer.sin_port) {
                        send_error(t->fd, &from[k], 5, "unknown transfer ID");
                        continue;
                    }
                    if (len < 4 || p[0] != 0) continue;
                    int opcode = p[1];
                    if (t->state == DALLYING) { /* our last ACK was lost: say it again */
                        if (opcode == DATA) send_to_peer(t, t->last, t->last_len, 0);
                        continue;
                    }
                    if (opcode == ERROR) {
                        fail(t, -1, "error %d from the server: %.*s", p[2] << 8 | p[3],
                             (int)(len > 4 ? strnlen((const char *)p + 4, len - 4) : 0), (const char *)p + 4);
                        active--;
                        continue;
                    }
                    if (opcode == OACK) {
                        if (t->state != WAITING) { /* the OACK again: our ACK 0 was lost */
                            if (t->expected == 1) send_to_peer(t, t->last, t->last_len, 0);
                            continue;
                        }
                        if (take_oack(t, p, len, blksize, window, tsize) < 0) { active--; continue; }
                        t->state = RECEIVING;
                        send_ack(t, 0);
                        t->acks--; /* ACK 0 answers the OACK, not data */
                        t->tries = 0;
                        t->due = at + timeout;
                        continue;
                    }
                    if (opcode != DATA) continue;
                    if (t->state == WAITING) t->state = RECEIVING; /* no OACK: the server took no option */
                    long block = p[2] << 8 | p[3];
                    size_t payload = len - 4;
                    if (block != (t->expected & 0xFFFF)) {
                        duplicates++;
                        /* lock-step: the server repeated the block we acknowledged (our ACK was lost); windowed,
                         * a gap or an old window: acknowledge what we have, once until the next new block */
                        if ((t->window == 1 && block == ((t->expected - 1) & 0xFFFF)) || !t->gap_acked) {
                            send_ack(t, (t->expected - 1) & 0xFFFF);
                            t->gap_acked = 1;
                        }
                        continue;
                    }
                    if ((long)payload > t->blksize) { fail(t, 4, "block %ld is longer than blksize", block); active--; continue; }
                    if (content) {
                        if (t->bytes + (long long)payload > content_len) {
                            fail(t, 0, "longer than the file at block %ld", t->expected);
                            active--;
                            continue;
                        }
                        if (memcmp(p + 4, content + t->bytes, payload)) {
                            fail(t, 0, "block %ld differs from the file", t->expected);
                            active--;
                            continue;
                        }
                    }
                    t->bytes += (long long)payload;
                    t->expected++;
                    t->since_ack++;
                    t->gap_acked = 0;
                    t->tries = 0;
                    t->due = at + timeout;
                    int final = (long)payload < t->blksize;
                    if (final || t->since_ack >= t->window) send_ack(t, (t->expected - 1) & 0xFFFF);
                    if (final) {
                        t->finished = at;
                        if (t->tsize >= 0 && t->tsize != t->bytes) {
                            fail(t, -1, "tsize said %ld, got %lld bytes", t->tsize, t->bytes);
                            active--;
                        } else if (content && t->bytes != content_len) {
                            fail(t, -1, "shorter than the file: %lld bytes", t->bytes);
                            active--;
                        } else {
                            t->verified = content != NULL;
                            t->state = DALLYING;
                            t->due = at + dally;
                        }
                    }
                }
                if (got < BATCH) break;
            }
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    double last = start;
    long completed = 0;
    for (long i = 0; i < count; i++) {
        if (ts[i].ok) completed++;
        if (ts[i].ok && ts[i].finished > last) last = ts[i].finished;
    }
    printf("{\"client\": \"c\", \"completed\": %ld, \"failed\": %ld, \"seconds\": %.6f, \"client_cpu_s\": %.4f, "
           "\"retransmits\": %ld, \"duplicates\": %ld, \"transfers\": [",
           completed, count - completed, (completed ? last : now()) - start, cpu, retransmits, duplicates);
    for (long i = 0; i < count; i++) {
        struct transfer *t = &ts[i];
        char error[400] = "";
        if (!t->ok) { /* JSON-escape the message */
            size_t o = 0;
            for (const char *c = t->error; *c && o < sizeof error - 8; c++) {
                if (*c == '"' || *c == '\\') error[o++] = '\\', error[o++] = *c;
                else if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e) o += (size_t)sprintf(error + o, "\\u%04x", (unsigned char)*c);
                else error[o++] = *c;
            }
            error[o] = 0;
        }
        printf("%s{\"ok\": %s, \"bytes\": %lld, \"seconds\": %.6f, \"blksize\": %ld, \"windowsize\": %d, \"acks\": %ld, "
               "\"verified\": %s%s%s%s}", i ? ", " : "", t->ok ? "true" : "false", t->bytes,
               (t->finished ? t->finished : now()) - t->started, t->blksize, t->window, t->acks,
               t->verified ? "true" : "false", t->ok ? "" : ", \"error\": \"", error, t->ok ? "" : "\"");
        close(t->fd);
    }
    printf("]}\n");
    return 0;
}
