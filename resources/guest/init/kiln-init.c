/*
 * Kiln test guest init (/init in the initramfs, /sbin/init on the rootfs).
 *
 * Prints the boot marker, signals the VMM's boot timer, reports the online CPUs, applies a
 * cloud-init NoCloud seed when a disk carries one (a vfat filesystem labelled cidata, as Kiln's
 * launcher writes): the hostname from meta-data's local-hostname, and a user-data that starts
 * with "#!" run once per instance-id (as cloud-init's scripts-user; the last instance-id is
 * kept in /var/lib/kiln/instance-id when the root filesystem is writable), after configuring
 * eth0 when the guest has a NIC: by DHCP (busybox udhcpc, kept running to renew the lease), or
 * statically from the seed's network-config (as the launcher read it into kiln-network).
 * Then it does what
 * `kiln.action=` on the kernel command line asks:
 *   poweroff (default)  write 0 to the VMM's debug-exit port 0xf4 (kiln-vmm exits 0)
 *   exit:N              write N to the debug-exit port (kiln-vmm exits N)
 *   reboot              reboot through the kernel (i8042 reset; kiln-vmm exits 0)
 *   panic               exit, so the kernel panics ("Attempted to kill init!")
 *   hold                stay up until the VMM is stopped or init is signalled
 *   shell               run /bin/sh on the console (busybox images), power off when it ends
 *   run:PATH            run the shell script PATH (busybox images), then power off with its
 *                       exit status as the debug-exit value (0 = success)
 *   spin:N              spin in user space (`for (;;);` at one instruction) for N seconds,
 *                       then power off: a busy guest process the VMM must not mistake for a
 *                       stuck vCPU
 *
 * While holding or running the shell it acts on the signals init conventionally gets:
 * SIGUSR1/SIGUSR2 (busybox halt/poweroff) power off, SIGTERM (busybox reboot) and SIGINT
 * (Ctrl-Alt-Del, which a kernel with a VT delivers as a signal) reboot. Kiln's kernel has no VT,
 * so init also watches the keyboard's event device (SIGIO) for Ctrl-Alt-Del itself.
 *
 * A static C program rather than a shell script: on hosts that emulate guest ring-0 code every
 * fork and exec costs seconds, and the marker should measure the kernel, not the shell.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#define BOOT_TIMER_ADDR 0xd0000000UL
#define BOOT_TIMER_MAGIC 123
#define DEBUG_EXIT_PORT 0xf4

static volatile sig_atomic_t requested;

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static void on_signal(int sig) { requested = sig; }

#include "kiln-keyboard.h"

static int keyboard = -1;
static struct keyboard_state keys;

/* Opens the keyboard's event device and asks for SIGIO when it has input. */
static void watch_keyboard(void) {
	keyboard = open_keyboard(O_RDONLY | O_NONBLOCK);
	if (keyboard >= 0) {
		fcntl(keyboard, F_SETOWN, getpid());
		fcntl(keyboard, F_SETFL, O_NONBLOCK | O_ASYNC);
	}
}

/* Reads pending key events; true once Delete is pressed while Ctrl and Alt are held. */
static int ctrl_alt_del_typed(void) {
	struct input_event ev[16];
	ssize_t n;
	int typed = 0;
	while (keyboard >= 0 && (n = read(keyboard, ev, sizeof(ev))) > 0)
		typed |= ctrl_alt_del_in(&keys, ev, (size_t)n / sizeof(ev[0]));
	return typed;
}

static void catch_init_signals(void) {
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGIO, &sa, NULL);
	reboot(RB_DISABLE_CAD); /* with a VT, Ctrl-Alt-Del arrives as SIGINT */
	watch_keyboard();
}

static void mount_fs(const char *type, const char *dir) {
	mkdir(dir, 0755);
	mount(type, dir, type, 0, NULL); /* already mounted (rootfs /dev): fine */
}

/* Reads a small file into buf without its trailing newline; "" when unreadable. */
static const char *read_line(const char *path, char *buf, size_t len) {
	int fd = open(path, O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, len - 1);
	if (fd >= 0)
		close(fd);
	if (n < 0)
		n = 0;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return buf;
}

static void signal_boot_timer(void) {
	int fd = open("/dev/mem", O_RDWR | O_SYNC);
	if (fd < 0)
		return;
	volatile uint8_t *p = mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, fd, BOOT_TIMER_ADDR);
	if (p != MAP_FAILED) {
		*p = BOOT_TIMER_MAGIC;
		munmap((void *)p, 4096);
	}
	close(fd);
}

static void power_off(int code) {
	sync();
	mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	int fd = open("/dev/port", O_WRONLY);
	uint8_t b = (uint8_t)code;
	if (fd >= 0)
		(void)!pwrite(fd, &b, 1, DEBUG_EXIT_PORT);
	say("kiln-init: the VMM did not take the debug-exit port; halting\n");
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

static void do_reboot(void) {
	sync();
	reboot(RB_AUTOBOOT);
}

/* Acts on a signal caught by catch_init_signals(); returns if none was. */
static void act_on_signal(void) {
	switch (requested) {
	case SIGUSR1:
	case SIGUSR2:
		power_off(0);
		break;
	case SIGTERM:
		do_reboot();
		break;
	case SIGINT:
		say("kiln-init: Ctrl-Alt-Del: syncing and rebooting\n");
		do_reboot();
		break;
	case SIGIO:
		requested = 0;
		if (ctrl_alt_del_typed()) {
			say("kiln-init: Ctrl-Alt-Del: syncing and rebooting\n");
			do_reboot();
		}
		break;
	}
}

/* Runs /bin/sh (interactive when script is NULL); returns its exit status. */
static int run_shell(const char *script) {
	pid_t pid = fork();
	if (pid == 0) {
		setsid();
		ioctl(0, TIOCSCTTY, 1);
		if (script)
			execl("/bin/sh", "sh", script, (char *)NULL);
		else
			execl("/bin/sh", "sh", "-l", (char *)NULL);
		say("kiln-init: no /bin/sh in this image (use initramfs-busybox.cpio or rootfs.ext4)\n");
		_exit(127);
	}
	/* As PID 1, reap every orphan until the shell itself ends or init is signalled. */
	int status = 0;
	while (pid > 0) {
		int st;
		pid_t w = wait(&st);
		if (w == pid) {
			status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			break;
		}
		if (w < 0 && errno == EINTR)
			act_on_signal();
		if (w < 0 && errno == ECHILD)
			break;
	}
	return status;
}

/* ---- cloud-init NoCloud seed ---- */

#define SEED_DIR "/run/kiln-seed"

/* Whether the FAT boot sector of `dev` names the volume cidata (FAT12/16 label at 0x2b,
 * FAT32 at 0x47), as cloud-init requires of a NoCloud seed. */
static int has_cidata_label(const char *dev) {
	unsigned char sector[512];
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : pread(fd, sector, sizeof(sector), 0);
	if (fd >= 0)
		close(fd);
	if (n != (ssize_t)sizeof(sector) || sector[510] != 0x55 || sector[511] != 0xaa)
		return 0;
	static const size_t offsets[] = {0x2b, 0x47};
	for (size_t i = 0; i < 2; i++)
		if (strncasecmp((const char *)sector + offsets[i], "cidata     ", 11) == 0)
			return 1;
	return 0;
}

/* Mounts the first virtio disk labelled cidata read-only at SEED_DIR; 0 when there is none. */
static int mount_seed(void) {
	DIR *d = opendir("/sys/block");
	struct dirent *e;
	char dev[300];
	int found = 0;
	if (!d)
		return 0;
	while (!found && (e = readdir(d))) {
		if (strncmp(e->d_name, "vd", 2) != 0)
			continue;
		snprintf(dev, sizeof(dev), "/dev/%s", e->d_name);
		if (!has_cidata_label(dev))
			continue;
		mkdir(SEED_DIR, 0755);
		found = mount(dev, SEED_DIR, "vfat", MS_RDONLY, NULL) == 0;
		if (!found)
			say("kiln-init: cannot mount the cidata disk\n");
	}
	closedir(d);
	return found;
}

/* The value of `key` in meta-data, written either as YAML (key: value) or as JSON
 * ("key": "value"); "" when absent. */
static void meta_value(const char *meta, const char *key, char *out, size_t len) {
	out[0] = 0;
	const char *p = strstr(meta, key);
	while (p && p != meta && p[-1] != '\n' && p[-1] != '"' && p[-1] != ' ' && p[-1] != '{' &&
	       p[-1] != ',')
		p = strstr(p + 1, key);
	if (!p)
		return;
	p += strlen(key);
	p += strspn(p, "\" \t");
	if (*p != ':')
		return;
	p++;
	p += strspn(p, " \t\"'");
	size_t n = strcspn(p, "\"',}\r\n");
	while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	if (n >= len)
		n = len - 1;
	memcpy(out, p, n);
	out[n] = 0;
}

/* Runs `path` and waits for it, reaping other children meanwhile; returns its exit status. */
static int run_and_wait(const char *path) {
	pid_t pid = fork();
	if (pid == 0) {
		execl(path, path, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	pid_t w;
	while (pid > 0 && (w = wait(&st)) != pid)
		if (w < 0 && errno != EINTR)
			return 127;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int copy_file(const char *from, const char *to, mode_t mode) {
	char buf[4096];
	ssize_t n;
	int in = open(from, O_RDONLY | O_CLOEXEC);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	int ok = in >= 0 && out >= 0;
	while (ok && (n = read(in, buf, sizeof(buf))) > 0)
		ok = write(out, buf, (size_t)n) == n;
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return ok;
}

/* Sets an IPv4 address-like field of eth0 (SIOCSIFADDR, SIOCSIFNETMASK); 0 on success. */
static int set_eth0_addr(int s, unsigned long req, const char *ip) {
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "eth0");
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	if (inet_pton(AF_INET, ip, &sin->sin_addr) != 1)
		return -1;
	return ioctl(s, req, &ifr);
}

/* Writes /etc/resolv.conf from space-separated DNS servers and search domains. */
static void write_resolv_conf(const char *dns, const char *search) {
	char buf[1024], list[256];
	size_t n = 0;
	if (search[0])
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "search %s\n", search);
	snprintf(list, sizeof(list), "%s", dns);
	for (char *save = NULL, *t = strtok_r(list, " ", &save); t && n < sizeof(buf);
	     t = strtok_r(NULL, " ", &save))
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "nameserver %s\n", t);
	int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, n < sizeof(buf) ? n : sizeof(buf) - 1) < 0)
		say("kiln-init: cannot write /etc/resolv.conf\n");
	if (fd >= 0)
		close(fd);
}

/*
 * Applies a static configuration of eth0 from the seed's kiln-network (the launcher's reading of
 * the NoCloud network-config: address, netmask, gateway, mtu, dns, search) with ioctls, no fork.
 */
static void apply_static_network(const char *conf) {
	char addr[64], mask[64], gw[64], mtu[16], dns[256], search[256], line[768];
	meta_value(conf, "address", addr, sizeof(addr));
	meta_value(conf, "netmask", mask, sizeof(mask));
	meta_value(conf, "gateway", gw, sizeof(gw));
	meta_value(conf, "mtu", mtu, sizeof(mtu));
	meta_value(conf, "dns", dns, sizeof(dns));
	meta_value(conf, "search", search, sizeof(search));
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "eth0");
	int ok = s >= 0 && set_eth0_addr(s, SIOCSIFADDR, addr) == 0 &&
		 set_eth0_addr(s, SIOCSIFNETMASK, mask) == 0;
	if (ok && mtu[0]) {
		ifr.ifr_mtu = atoi(mtu);
		ok = ioctl(s, SIOCSIFMTU, &ifr) == 0;
	}
	if (ok && (ok = ioctl(s, SIOCGIFFLAGS, &ifr) == 0)) {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		ok = ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
	}
	if (ok && gw[0]) {
		struct rtentry rt;
		memset(&rt, 0, sizeof(rt));
		struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst;
		struct sockaddr_in *gen = (struct sockaddr_in *)&rt.rt_genmask;
		struct sockaddr_in *via = (struct sockaddr_in *)&rt.rt_gateway;
		dst->sin_family = gen->sin_family = via->sin_family = AF_INET;
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = ifr.ifr_name;
		ok = inet_pton(AF_INET, gw, &via->sin_addr) == 1 && ioctl(s, SIOCADDRT, &rt) == 0;
	}
	if (s >= 0)
		close(s);
	if (dns[0] || search[0])
		write_resolv_conf(dns, search);
	snprintf(line, sizeof(line), "kiln-init: eth0 %s netmask %s gateway %s mtu %s dns %s%s\n",
		 addr, mask, gw[0] ? gw : "none", mtu[0] ? mtu : "default", dns[0] ? dns : "none",
		 ok ? " (NoCloud network-config)" : ": failed to apply the NoCloud network-config");
	say(line);
}

/*
 * Configures eth0 when the guest has a NIC. A NoCloud network-config replaces DHCP: its static
 * address, as the launcher read it into kiln-network, is applied here (a network-config without
 * kiln-network, from another seed writer, is left to user-data). Otherwise, or when it asks for
 * DHCP, busybox udhcpc runs its script (/etc/udhcpc/default.script: address, route, MTU,
 * resolv.conf, hostname) and stays in the background to renew the lease; init waits until it
 * has a lease (or gave up after a few tries), so that user-data finds the network up.
 */
static void configure_network(void) {
	static const char *const argv[] = {"/sbin/udhcpc", "-i", "eth0", "-b", "-t", "6", "-T",
					   "2", "-O", "mtu", "-O", "search", NULL};
	if (access("/sys/class/net/eth0", F_OK) != 0)
		return;
	if (access(SEED_DIR "/network-config", F_OK) == 0) {
		char conf[1024], mode[16];
		int fd = open(SEED_DIR "/kiln-network", O_RDONLY | O_CLOEXEC);
		ssize_t n = fd < 0 ? -1 : read(fd, conf, sizeof(conf) - 1);
		if (fd >= 0)
			close(fd);
		if (n <= 0) {
			say("kiln-init: network-config in the NoCloud seed without kiln-network: eth0 left "
			    "to user-data\n");
			return;
		}
		conf[n] = 0;
		meta_value(conf, "mode", mode, sizeof(mode));
		if (strcmp(mode, "static") == 0) {
			apply_static_network(conf);
			return;
		}
	}
	if (access("/sbin/udhcpc", X_OK) != 0)
		return;
	say("kiln-init: DHCP on eth0\n");
	pid_t pid = fork();
	if (pid == 0) {
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	int st = 0;
	pid_t w;
	while (pid > 0 && (w = wait(&st)) != pid)
		if (w < 0 && errno != EINTR)
			break;
}

static void apply_seed(void) {
	char meta[4096], value[256], last[256], head[3] = {0};
	if (!mount_seed()) {
		configure_network();
		return;
	}
	int fd = open(SEED_DIR "/meta-data", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? 0 : read(fd, meta, sizeof(meta) - 1);
	if (fd >= 0)
		close(fd);
	meta[n > 0 ? n : 0] = 0;
	meta_value(meta, "local-hostname", value, sizeof(value));
	if (value[0] && sethostname(value, strlen(value)) == 0) {
		say("kiln-init: hostname ");
		say(value);
		say(" (NoCloud seed)\n");
	}
	configure_network();
	meta_value(meta, "instance-id", value, sizeof(value));
	fd = open(SEED_DIR "/user-data", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, head, 2) != 2 || strcmp(head, "#!") != 0) {
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);
	read_line("/var/lib/kiln/instance-id", last, sizeof(last));
	if (value[0] && strcmp(value, last) == 0) {
		say("kiln-init: user-data already ran for instance ");
		say(value);
		say("\n");
		return;
	}
	if (!copy_file(SEED_DIR "/user-data", "/run/kiln-user-data", 0700)) {
		say("kiln-init: cannot copy user-data to /run\n");
		return;
	}
	say("kiln-init: running user-data\n");
	int status = run_and_wait("/run/kiln-user-data");
	snprintf(meta, sizeof(meta), "kiln-init: user-data exited with status %d\n", status);
	say(meta);
	mkdir("/var/lib", 0755);
	mkdir("/var/lib/kiln", 0755);
	fd = open("/var/lib/kiln/instance-id", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0) {
		(void)!write(fd, value, strlen(value));
		(void)!write(fd, "\n", 1);
		close(fd);
		sync();
	}
}

/* ---- spin:N ---- */

static void end_spin(int sig) {
	(void)sig;
	say("kiln-init: spun in user space; powering off\n");
	power_off(0);
}

static void spin(int seconds) {
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = end_spin;
	sigaction(SIGALRM, &sa, NULL);
	say("KILN_SPINNING\n");
	alarm(seconds > 0 ? (unsigned)seconds : 1);
	for (;;)
		;
}

int main(void) {
	char buf[4096], action[256] = "poweroff";

	mount_fs("proc", "/proc");
	read_line("/proc/uptime", buf, sizeof(buf));
	buf[strcspn(buf, " ")] = 0;
	say("KILN_GUEST_OK uptime=");
	say(buf);
	say("\n");

	mount_fs("devtmpfs", "/dev");
	mount_fs("sysfs", "/sys");
	signal_boot_timer();
	mount_fs("tmpfs", "/run");
	say("KILN_CPUS_ONLINE ");
	say(read_line("/sys/devices/system/cpu/online", buf, sizeof(buf)));
	say("\n");

	apply_seed();
	read_line("/proc/cmdline", buf, sizeof(buf));
	for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " "))
		if (strncmp(tok, "kiln.action=", 12) == 0)
			snprintf(action, sizeof(action), "%s", tok + 12);

	if (strcmp(action, "poweroff") == 0)
		power_off(0);
	if (strncmp(action, "exit:", 5) == 0)
		power_off(atoi(action + 5));
	if (strcmp(action, "reboot") == 0)
		do_reboot();
	if (strncmp(action, "spin:", 5) == 0)
		spin(atoi(action + 5));
	if (strcmp(action, "panic") == 0) {
		say("KILN_PANIC_REQUESTED\n");
		return 1;
	}
	catch_init_signals();
	if (strcmp(action, "hold") == 0) {
		say("KILN_HOLDING\n");
		for (;;) {
			pause();
			act_on_signal();
		}
	}
	if (strcmp(action, "shell") == 0) {
		say("Kiln guest shell: 'poweroff' or Ctrl-D ends the VM.\n");
		run_shell(NULL);
		power_off(0);
	}
	if (strncmp(action, "run:", 4) == 0)
		power_off(run_shell(action + 4));
	say("kiln-init: unknown kiln.action=");
	say(action);
	say("\n");
	power_off(1);
}
