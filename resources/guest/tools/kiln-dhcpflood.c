/*
 * kiln-dhcpflood: a hostile DHCP client for tests of the launcher's DHCP server. For SECONDS it
 * sends, as fast as it can, datagrams to port 67 (broadcast on IFACE and unicast to SERVER):
 * random bytes of random lengths, BOOTREQUESTs with a hardware address length past 16,
 * options running past the end, and well-formed DISCOVERs from made-up MACs (a flood). Prints
 * "KILN_DHCPFLOOD sent N" at the end.
 *
 *   kiln-dhcpflood IFACE SERVER SECONDS
 */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint32_t state = 0x9e3779b9u;

static uint32_t next(void) {
	state ^= state << 13;
	state ^= state >> 17;
	state ^= state << 5;
	return state;
}

/* A BOOTREQUEST header with the DHCP magic cookie; returns its length (240). */
static size_t bootrequest(unsigned char *p) {
	memset(p, 0, 240);
	p[0] = 1; /* BOOTREQUEST */
	p[1] = 1; /* Ethernet */
	p[2] = 6;
	uint32_t xid = next();
	memcpy(p + 4, &xid, 4);
	p[28] = 0x02;
	for (int i = 29; i < 34; i++)
		p[i] = (unsigned char)next();
	p[236] = 99, p[237] = 130, p[238] = 83, p[239] = 99;
	return 240;
}

static size_t datagram(unsigned char *p, unsigned kind) {
	size_t n;
	switch (kind % 4) {
	case 0: /* random bytes */
		n = next() % 600;
		for (size_t i = 0; i < n; i++)
			p[i] = (unsigned char)next();
		return n;
	case 1: /* hlen past chaddr */
		n = bootrequest(p);
		p[2] = (unsigned char)(17 + next() % 200);
		p[n++] = 53, p[n++] = 1, p[n++] = 1, p[n++] = 255;
		return n;
	case 2: /* an option running past the end, a classless route with prefix 200 */
		n = bootrequest(p);
		p[n++] = 53, p[n++] = 1, p[n++] = 1;
		p[n++] = 121, p[n++] = 5, p[n++] = 200, p[n++] = 10, p[n++] = 0, p[n++] = 0, p[n++] = 1;
		p[n++] = 12, p[n++] = 250, p[n++] = 'x';
		return n;
	default: /* a well-formed DISCOVER from another MAC */
		n = bootrequest(p);
		p[n++] = 53, p[n++] = 1, p[n++] = 1, p[n++] = 255;
		return n;
	}
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: kiln-dhcpflood IFACE SERVER SECONDS\n");
		return 2;
	}
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	int on = 1;
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_BROADCAST, &on, sizeof(on)) < 0 ||
	    setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, argv[1], (socklen_t)strlen(argv[1])) < 0) {
		perror("kiln-dhcpflood: socket");
		return 1;
	}
	struct sockaddr_in to[2];
	memset(to, 0, sizeof(to));
	for (int i = 0; i < 2; i++) {
		to[i].sin_family = AF_INET;
		to[i].sin_port = htons(67);
	}
	to[0].sin_addr.s_addr = htonl(INADDR_BROADCAST);
	if (inet_pton(AF_INET, argv[2], &to[1].sin_addr) != 1) {
		fprintf(stderr, "kiln-dhcpflood: bad server address %s\n", argv[2]);
		return 2;
	}
	time_t end = time(NULL) + atoi(argv[3]);
	unsigned long sent = 0;
	unsigned char p[1024];
	while (time(NULL) < end) {
		for (int burst = 0; burst < 256; burst++) {
			size_t n = datagram(p, (unsigned)sent);
			if (sendto(s, p, n, 0, (struct sockaddr *)&to[sent & 1], sizeof(to[0])) >= 0)
				sent++;
			else
				usleep(100); /* the TAP's queue is full: let it drain */
		}
	}
	printf("KILN_DHCPFLOOD sent %lu\n", sent);
	return 0;
}
