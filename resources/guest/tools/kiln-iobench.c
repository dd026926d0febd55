/*
 * kiln-iobench: disk and TCP throughput measured inside the guest, for kiln-bench.
 *
 *   kiln-iobench seqread  DEV MIB        O_DIRECT 1 MiB reads from the start of DEV
 *   kiln-iobench seqwrite DEV MIB        O_DIRECT 1 MiB writes, then fdatasync
 *   kiln-iobench randread DEV SECONDS    O_DIRECT 4 KiB reads at random aligned offsets
 *   kiln-iobench tcprecv  IP PORT        connect, read until EOF
 *   kiln-iobench tcpsend  IP PORT MIB    connect, send MIB from a user buffer
 *
 * Prints one line "RESULT <test> <bytes> <seconds> <ops>". A static C program: shell tools
 * would measure fork, exec and pipe copies (seconds each where guest ring 0 is emulated).
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
	char *buf = aligned_buffer(len);
	uint64_t total = 0, want = (uint64_t)mib * MIB;
	double t0 = now();
	if (mib > 0) {
		while (total < want) {
			size_t chunk = want - total < len ? want - total : len;
			ssize_t n = send(s, buf, chunk, 0);
			if (n <= 0)
				die("send");
			total += n;
		}
		shutdown(s, SHUT_WR);
		while (recv(s, buf, len, 0) > 0) /* the peer closes once it has everything */
			;
	} else {
		ssize_t n;
		while ((n = recv(s, buf, len, 0)) > 0)
			total += n;
		if (n < 0)
			die("recv");
	}
	result(mib > 0 ? "tcpsend" : "tcprecv", total, now() - t0, 0);
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
