/*
 * The C peer of bench/netguard_classify_bench.ts: libpcap's own BPF filter,
 * timed in-process the same way as vmkit.
 *
 *   netguard_bpf_peer mem  FILE FILTER OPT          bpf_filter over the frames in memory
 *   netguard_bpf_peer file FILE FILTER READER       libpcap reading FILE and filtering it
 *   netguard_bpf_peer drop FILE                     drop FILE's pages from the page cache
 *
 * mem: the whole file is read into one buffer and its records indexed
 * (untimed), exactly as vmkit's readCapture holds it; the filter is compiled
 * with pcap_compile on a dead Ethernet handle (OPT 1: optimised, 0: not);
 * one untimed pass warms the caches, then one pass is timed.
 * file: READER is next_ex (pcap_open_offline, pcap_next_ex, pcap_offline_filter),
 * dispatch (pcap_dispatch with the filter set by pcap_setfilter) or bigbuf
 * (next_ex over a FILE with a 1 MiB stdio buffer); the time runs from before
 * the open to after the last record.
 * Prints one JSON line: {"ns":…, "frames":…, "matched":…, "lib": libpcap's version}.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pcap/pcap.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "netguard_bpf_peer: %s: %s\n", what, detail);
    exit(2);
}

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void compile(struct bpf_program *prog, const char *filter, int optimize) {
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, 262144);
    if (dead == NULL) die("pcap_open_dead", "failed");
    if (pcap_compile(dead, prog, filter, optimize, PCAP_NETMASK_UNKNOWN) != 0) {
        die("pcap_compile", pcap_geterr(dead));
    }
    pcap_close(dead);
}

static int run_mem(const char *path, const char *filter, int optimize) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open", path);
    struct stat st;
    if (fstat(fd, &st) != 0) die("fstat", path);
    size_t size = (size_t)st.st_size;
    uint8_t *buf = malloc(size);
    if (buf == NULL) die("malloc", "file buffer");
    for (size_t got = 0; got < size;) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n <= 0) die("read", path);
        got += (size_t)n;
    }
    close(fd);
    if (size < 24 || rd32(buf) != 0xa1b2c3d4u) die("file", "not a little-endian microsecond pcap");
    size_t cap = 1024, count = 0;
    uint32_t *offs = malloc(cap * 4), *lens = malloc(cap * 4), *wires = malloc(cap * 4);
    for (size_t o = 24; o + 16 <= size;) {
        uint32_t len = rd32(buf + o + 8), wire = rd32(buf + o + 12);
        if (o + 16 + len > size) break;
        if (count == cap) {
            cap *= 2;
            offs = realloc(offs, cap * 4);
            lens = realloc(lens, cap * 4);
            wires = realloc(wires, cap * 4);
        }
        if (offs == NULL || lens == NULL || wires == NULL) die("realloc", "index");
        offs[count] = (uint32_t)(o + 16);
        lens[count] = len;
        wires[count] = wire;
        count++;
        o += 16 + len;
    }
    struct bpf_program prog;
    compile(&prog, filter, optimize);
    uint64_t matched = 0;
    for (size_t i = 0; i < count; i++) {
        matched += bpf_filter(prog.bf_insns, buf + offs[i], wires[i], lens[i]) != 0;
    }
    matched = 0;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < count; i++) {
        matched += bpf_filter(prog.bf_insns, buf + offs[i], wires[i], lens[i]) != 0;
    }
    uint64_t ns = now_ns() - t0;
    printf("{\"ns\":%llu,\"frames\":%zu,\"matched\":%llu,\"lib\":\"%s\"}\n",
           (unsigned long long)ns, count, (unsigned long long)matched, pcap_lib_version());
    pcap_freecode(&prog);
    free(buf);
    free(offs);
    free(lens);
    free(wires);
    return 0;
}

static uint64_t dispatched;

static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *data) {
    (void)user;
    (void)h;
    (void)data;
    dispatched++;
}

static int run_file(const char *path, const char *filter, const char *reader) {
    struct bpf_program prog;
    compile(&prog, filter, 1);
    char err[PCAP_ERRBUF_SIZE];
    uint64_t frames = 0, matched = 0;
    uint64_t t0 = now_ns();
    pcap_t *p;
    FILE *f = NULL;
    if (strcmp(reader, "bigbuf") == 0) {
        f = fopen(path, "rb");
        if (f == NULL) die("fopen", path);
        if (setvbuf(f, NULL, _IOFBF, 1 << 20) != 0) die("setvbuf", path);
        p = pcap_fopen_offline(f, err);
    } else {
        p = pcap_open_offline(path, err);
    }
    if (p == NULL) die("pcap_open_offline", err);
    if (strcmp(reader, "dispatch") == 0) {
        if (pcap_setfilter(p, &prog) != 0) die("pcap_setfilter", pcap_geterr(p));
        int n;
        while ((n = pcap_dispatch(p, -1, on_packet, NULL)) > 0) {
        }
        if (n < 0) die("pcap_dispatch", pcap_geterr(p));
        matched = dispatched;
        frames = 0; /* pcap_dispatch does not count rejected records */
    } else {
        struct pcap_pkthdr *h;
        const u_char *data;
        int r;
        while ((r = pcap_next_ex(p, &h, &data)) == 1) {
            frames++;
            matched += pcap_offline_filter(&prog, h, data) != 0;
        }
        if (r != PCAP_ERROR_BREAK) die("pcap_next_ex", pcap_geterr(p));
    }
    pcap_close(p); /* closes f too */
    uint64_t ns = now_ns() - t0;
    printf("{\"ns\":%llu,\"frames\":%llu,\"matched\":%llu,\"lib\":\"%s\"}\n",
           (unsigned long long)ns, (unsigned long long)frames, (unsigned long long)matched,
           pcap_lib_version());
    pcap_freecode(&prog);
    return 0;
}

static int run_drop(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open", path);
    if (fdatasync(fd) != 0) die("fdatasync", path);
    int e = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (e != 0) die("posix_fadvise", strerror(e));
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "drop") == 0) return run_drop(argv[2]);
    if (argc == 5 && strcmp(argv[1], "mem") == 0) return run_mem(argv[2], argv[3], atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "file") == 0) return run_file(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: netguard_bpf_peer mem FILE FILTER OPT | file FILE FILTER READER | drop FILE\n");
    return 2;
}
