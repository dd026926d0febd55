/*
 * kiln-iobench: disk and TCP throughput measured inside the guest, for kiln-bench.
 *
 *   kiln-iobench seqread  DEV MIB        O_DIRECT 1 MiB reads from the start of DEV
 *   kiln-iobench seqwrite DEV MIB        O_DIRECT 1 MiB writes, then fdatasync
 *   kiln-iobench randread DEV SECONDS    O_DIRECT 4 KiB reads at random aligned offsets
 *   kiln-iobench tcprecv  IP PORT        connect, read until EOF
 *   kiln-iobench tcpsend  IP PORT MIB    connect, send MIB of the test stream (below)
 *
 * Prints "RESULT <test> <bytes> <seconds> <ops>"; the TCP tests also print "SHA256 <test> <hex>" of
 * the bytes received or sent. The test stream is xorshift64 (13, 7, 17) from
 * 0x9e3779b97f4a7c15, one low byte per step, as the end-to-end tests generate on the host.
 * A static C program: shell tools would measure fork, exec and pipe copies (seconds each where
 * guest ring 0 is emulated).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
	perror(what);
	exit(1);
}

static void result(const char *test, uint64_t bytes, double secs, uint64_t ops) {
	printf("RESULT %s %llu %.6f %llu\n", test, (unsigned long long)bytes, secs, (unsigned long long)ops);
	fflush(stdout);
}

static void *aligned_buffer(size_t len) {
	void *p;
	if (posix_memalign(&p, 4096, len))
		die("posix_memalign");
	for (size_t i = 0; i < len; i++)
		((unsigned char *)p)[i] = (unsigned char)(i * 31 + 7);
	return p;
}

static void seq(const char *dev, long mib, int write) {
	int fd = open(dev, (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
	if (fd < 0)
		die(dev);
	char *buf = aligned_buffer(MIB);
	double t0 = now();
	for (long i = 0; i < mib; i++) {
		ssize_t n = write ? pwrite(fd, buf, MIB, (off_t)i * MIB) : pread(fd, buf, MIB, (off_t)i * MIB);
		if (n != MIB)
			die(write ? "pwrite" : "pread");
	}
	if (write && fdatasync(fd))
		die("fdatasync");
	result(write ? "seqwrite" : "seqread", (uint64_t)mib * MIB, now() - t0, (uint64_t)mib);
}

static void randread(const char *dev, double seconds) {
	int fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0)
		die(dev);
	uint64_t size = 0;
	if (ioctl(fd, BLKGETSIZE64, &size) || size < 4096)
		die("BLKGETSIZE64");
	char *buf = aligned_buffer(4096);
	uint64_t blocks = size / 4096, x = 0x9e3779b97f4a7c15ULL, ops = 0;
	double t0 = now(), t;
	do {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		if (pread(fd, buf, 4096, (off_t)(x % blocks) * 4096) != 4096)
			die("pread");
		ops++;
		t = now();
	} while (t - t0 < seconds);
	result("randread", ops * 4096, t - t0, ops);
}

/* SHA-256 (FIPS 180-4), streaming. */
struct sha256 {
	uint32_t h[8];
	uint8_t block[64];
	uint64_t len;
};

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_init(struct sha256 *s) {
	static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
				       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	memcpy(s->h, h0, sizeof(h0));
	s->len = 0;
}

static void sha256_block(struct sha256 *s, const uint8_t *p) {
	uint32_t w[64], a, b, c, d, e, f, g, h;
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
	}
	s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
	s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha256_update(struct sha256 *s, const uint8_t *p, size_t n) {
	while (n > 0) {
		size_t used = s->len % 64, take = 64 - used < n ? 64 - used : n;
		memcpy(s->block + used, p, take);
		s->len += take, p += take, n -= take;
		if (s->len % 64 == 0)
			sha256_block(s, s->block);
	}
}

static void sha256_print(const char *test, struct sha256 *s) {
	uint64_t bits = s->len * 8;
	uint8_t pad = 0x80, zero = 0, len[8];
	sha256_update(s, &pad, 1);
	while (s->len % 64 != 56)
		sha256_update(s, &zero, 1);
	for (int i = 0; i < 8; i++)
		len[i] = (uint8_t)(bits >> (56 - 8 * i));
	sha256_update(s, len, 8);
	printf("SHA256 %s ", test);
	for (int i = 0; i < 8; i++)
		printf("%08x", s->h[i]);
	printf("\n");
	fflush(stdout);
}

static int connect_to(const char *ip, int port) {
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (s < 0 || inet_pton(AF_INET, ip, &a.sin_addr) != 1)
		die("socket");
	for (int tries = 0; connect(s, (struct sockaddr *)&a, sizeof(a)); tries++) {
		if (tries > 100)
			die("connect");
		usleep(100000);
	}
	return s;
}

static void tcp(const char *ip, int port, long mib) {
	int s = connect_to(ip, port);
	size_t len = 256 * 1024;
	uint8_t *buf = aligned_buffer(len);
	uint64_t total = 0, want = (uint64_t)mib * MIB, x = 0x9e3779b97f4a7c15ULL;
	struct sha256 sum;
	sha256_init(&sum);
	double t0 = now();
	if (mib > 0) {
		while (total < want) {
			size_t chunk = want - total < len ? want - total : len;
			for (size_t i = 0; i < chunk; i++) {
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				buf[i] = (uint8_t)x;
			}
			sha256_update(&sum, buf, chunk);
			for (size_t off = 0; off < chunk;) {
				ssize_t n = send(s, buf + off, chunk - off, 0);
				if (n <= 0)
					die("send");
				off += n;
			}
			total += chunk;
		}
		shutdown(s, SHUT_WR);
		while (recv(s, buf, len, 0) > 0) /* the peer closes once it has everything */
			;
	} else {
		ssize_t n;
		while ((n = recv(s, buf, len, 0)) > 0) {
			sha256_update(&sum, buf, n);
			total += n;
		}
		if (n < 0)
			die("recv");
	}
	const char *test = mib > 0 ? "tcpsend" : "tcprecv";
	result(test, total, now() - t0, 0);
	sha256_print(test, &sum);
}

int main(int argc, char **argv) {
	if (argc == 4 && !strcmp(argv[1], "seqread"))
		seq(argv[2], atol(argv[3]), 0);
	else if (argc == 4 && !strcmp(argv[1], "seqwrite"))
		seq(argv[2], atol(argv[3]), 1);
	else if (argc == 4 && !strcmp(argv[1], "randread"))
		randread(argv[2], atof(argv[3]));
	else if (argc == 4 && !strcmp(argv[1], "tcprecv"))
		tcp(argv[2], atoi(argv[3]), 0);
	else if (argc == 5 && !strcmp(argv[1], "tcpsend"))
		tcp(argv[2], atoi(argv[3]), atol(argv[4]));
	else {
		fprintf(stderr, "usage: see the comment at the top of kiln-iobench.c\n");
		return 2;
	}
	return 0;
}
