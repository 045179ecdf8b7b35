/* PXE DHCPDISCOVER load in C: bench/dhcp_load.py's proxy workloads, without the load generator being the
 * bottleneck (the Python one tops out near the servers it measures). Run inside the benchmark's client
 * namespace, never on a real interface. bench/dhcp.py compiles it with the system's cc into its work dir.
 *
 *   dhcp_load --iface IF [--rate N | --window W] [--secs S] [--varied] [--arch A] [--macs N]
 *
 * The same DISCOVERs as bench/dhcp_load.py (broadcast flag, options 53, 57, 55, 97, 94, 93, 60), from UDP
 * 68 to 255.255.255.255:67, a new MAC and xid each (--macs N: cycle over N MACs); `--varied`: the same five
 * kinds of firmware as dhcp_load.py's VARIED, a random GUID each. Replies are matched by xid and MAC; prints
 * the same JSON object: sent, offers, offers_per_s, loss_pct, p50_ms, p99_ms, send_errors, unmatched, sample.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PACKET 600
#define TABLE (1u << 20) /* outstanding requests, indexed by xid: more than any run leaves unanswered */
#define BATCH 64

struct kind { int arch; const char *vendor; const uint8_t *prl; size_t prl_len; };

static const uint8_t PRL0[] = {1, 2, 3, 5, 6, 12, 13, 15, 17, 43, 54, 60, 66, 67, 97, 128, 129, 130};
static const uint8_t PRL1[] = {1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59,
                               60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135};
static const uint8_t PRL2[] = {1, 3, 6, 43, 60, 66, 67, 97};
static const uint8_t PRL3[] = {1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135};
static const uint8_t PRL4[] = {1, 2, 3, 5, 6, 12, 13, 15, 17, 43, 54, 60, 66, 67, 97, 128};
static const struct kind VARIED[] = { /* dhcp_load.py's VARIED, in its order */
    {0, "PXEClient:Arch:00000:UNDI:002001", PRL0, sizeof PRL0},
    {7, "PXEClient:Arch:00007:UNDI:003016", PRL1, sizeof PRL1},
    {9, "PXEClient:Arch:00009:UNDI:003016", PRL2, sizeof PRL2},
    {0, "PXEClient:Arch:00000:UNDI:002001", PRL3, sizeof PRL3},
    {7, "PXEClient:Arch:00007:UNDI:003000", PRL4, sizeof PRL4},
};
#define KINDS (sizeof VARIED / sizeof VARIED[0])

struct template { uint8_t data[MAX_PACKET]; size_t len; size_t guid_at; };
struct slot { uint32_t xid; uint8_t mac[6]; double sent_at; };

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t next_random(void) { /* xorshift64*: fast, and the same run each time */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static size_t option(uint8_t *p, uint8_t code, const void *value, size_t len) {
    p[0] = code; p[1] = (uint8_t)len; memcpy(p + 2, value, len);
    return 2 + len;
}

static void build(struct template *t, int arch, const char *vendor, const uint8_t *prl, size_t prl_len) {
    uint8_t *p = t->data, guid[17] = {0}, arch_be[2] = {(uint8_t)(arch >> 8), (uint8_t)arch};
    char default_vendor[40];
    memset(p, 0, MAX_PACKET);
    p[0] = 1; p[1] = 1; p[2] = 6; p[10] = 0x80; /* BOOTREQUEST, Ethernet, broadcast flag */
    memcpy(p + 236, "\x63\x82\x53\x63", 4);
    size_t i = 240;
    i += option(p + i, 53, "\x01", 1);
    i += option(p + i, 57, "\x05\xc0", 2);
    i += option(p + i, 55, prl, prl_len);
    for (int k = 0; k < 16; k++) guid[k + 1] = (uint8_t)k;
    i += option(p + i, 97, guid, 17);
    t->guid_at = i - 16;
    i += option(p + i, 94, "\x01\x02\x01", 3);
    i += option(p + i, 93, arch_be, 2);
    if (!vendor) {
        snprintf(default_vendor, sizeof default_vendor, "PXEClient:Arch:%05d:UNDI:002001", arch);
        vendor = default_vendor;
    }
    i += option(p + i, 60, vendor, strlen(vendor));
    p[i++] = 255;
    t->len = i;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *iface = NULL;
    double rate = 0, secs = 5;
    int window = 32, varied = 0, arch = 0;
    long macs = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--iface")) iface = v, i++;
        else if (!strcmp(a, "--rate")) rate = atof(v), i++;
        else if (!strcmp(a, "--window")) window = atoi(v), i++;
        else if (!strcmp(a, "--secs")) secs = atof(v), i++;
        else if (!strcmp(a, "--arch")) arch = atoi(v), i++;
        else if (!strcmp(a, "--macs")) macs = atol(v), i++;
        else if (!strcmp(a, "--varied")) varied = 1;
        else { fprintf(stderr, "unknown argument %s\n", a); return 2; }
    }
    if (!iface || !strcmp(iface, "lo")) { fprintf(stderr, "refusing: give the client end of the veth pair\n"); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), one = 1, buffer = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, iface, strlen(iface)) < 0) { perror("SO_BINDTODEVICE"); return 1; }
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(68)}, to = {.sin_family = AF_INET, .sin_port = htons(67)};
    to.sin_addr.s_addr = htonl(INADDR_BROADCAST);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) { perror("bind"); return 1; }

    static struct template templates[KINDS + 1];
    size_t kinds = 1;
    if (varied) {
        for (size_t k = 0; k < KINDS; k++) build(&templates[k], VARIED[k].arch, VARIED[k].vendor, VARIED[k].prl, VARIED[k].prl_len);
        kinds = KINDS;
    } else {
        build(&templates[0], arch, NULL, PRL0, sizeof PRL0);
    }
    struct slot *table = calloc(TABLE, sizeof *table);
    size_t latency_cap = 1 << 20, answered = 0;
    double *latencies = malloc(latency_cap * sizeof *latencies);
    static uint8_t rx[BATCH][2048];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    for (int k = 0; k < BATCH; k++) {
        iov[k] = (struct iovec){rx[k], sizeof rx[k]};
        msgs[k].msg_hdr = (struct msghdr){.msg_iov = &iov[k], .msg_iovlen = 1};
    }
    char sample[2 * MAX_PACKET + 1] = "";
    uint32_t xid_base = (uint32_t)next_random(), mac_base = (uint32_t)next_random();
    long sent = 0, outstanding = 0, send_errors = 0, unmatched = 0;
    double start = now(), end = start + secs, last = start;
    for (;;) {
        double t = now();
        if (t < end) {
            long due = rate > 0 ? (long)((t - start) * rate) - sent : window - outstanding;
            for (long n = 0; n < due && n < 256; n++) {
                struct template *tp = &templates[sent % kinds];
                uint32_t xid = xid_base + (uint32_t)sent, xid_be = htonl(xid);
                uint32_t mac_low = mac_base + (uint32_t)(macs ? sent % macs : sent); /* new each time, 2^24 of them */
                uint8_t mac[6] = {0x52, 0x54, 0x00, (uint8_t)(mac_low >> 16), (uint8_t)(mac_low >> 8), (uint8_t)mac_low};
                memcpy(tp->data + 4, &xid_be, 4);
                memcpy(tp->data + 28, mac, 6);
                if (varied) {
                    uint64_t g1 = next_random(), g2 = next_random();
                    memcpy(tp->data + tp->guid_at, &g1, 8);
                    memcpy(tp->data + tp->guid_at + 8, &g2, 8);
                }
                if (sendto(fd, tp->data, tp->len, 0, (struct sockaddr *)&to, sizeof to) < 0) { send_errors++; continue; }
                struct slot *s = &table[xid & (TABLE - 1)];
                if (s->sent_at == 0) outstanding++;
                *s = (struct slot){.xid = xid, .sent_at = now()};
                memcpy(s->mac, mac, 6);
                sent++;
            }
        } else if (t > end + 1.0 || outstanding == 0) {
            break;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 1) <= 0) continue;
        int got = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        double at = now();
        for (int k = 0; k < got; k++) {
            const uint8_t *d = rx[k];
            if (msgs[k].msg_len < 244 || d[0] != 2 || memcmp(d + 236, "\x63\x82\x53\x63", 4)) continue;
            uint32_t xid;
            memcpy(&xid, d + 4, 4);
            xid = ntohl(xid);
            struct slot *s = &table[xid & (TABLE - 1)];
            if (s->sent_at == 0 || s->xid != xid || memcmp(s->mac, d + 28, 6)) { unmatched++; continue; }
            if (answered == latency_cap) latencies = realloc(latencies, (latency_cap *= 2) * sizeof *latencies);
            latencies[answered++] = at - s->sent_at;
            s->sent_at = 0;
            outstanding--;
            last = at;
            if (!sample[0])
                for (unsigned b = 0; b < msgs[k].msg_len && b < MAX_PACKET; b++) sprintf(sample + 2 * b, "%02x", d[b]);
        }
    }
    (void)last;
    double elapsed = (now() < end ? now() : end) - start;
    qsort(latencies, answered, sizeof *latencies, by_value);
#define QUANTILE(q) (answered ? 1000 * latencies[(size_t)((q) * answered) < answered ? (size_t)((q) * answered) : answered - 1] : 0)
    printf("{\"sent\": %ld, \"offers\": %zu, \"offers_per_s\": %.1f, \"loss_pct\": %.2f, \"p50_ms\": %.3f, "
           "\"p99_ms\": %.3f, \"send_errors\": %ld, \"unmatched\": %ld, \"sample\": \"%s\", \"generator\": \"c\"}\n",
           sent, answered, answered / elapsed, 100.0 * (sent - (long)answered) / (sent ? sent : 1), QUANTILE(0.5),
           QUANTILE(0.99), send_errors, unmatched, sample);
    return 0;
}
