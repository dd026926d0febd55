/*
 * kiln-ctrl-alt-del: Ctrl-Alt-Del for the Debian image's busybox init. Kiln's kernel has no VT,
 * so the kernel never turns the keyboard's Ctrl-Alt-Del (the VMM API's SendCtrlAltDel, what the
 * launcher sends when its pod stops) into init's SIGINT; this watches the keyboard's event
 * device instead (as kiln-init does for Kiln's own guest) and sends busybox init SIGTERM, its
 * reboot request: init runs inittab's shutdown action (rcK) and reboots, which ends kiln-vmm.
 * SIGTERM rather than SIGINT (init's ctrlaltdel action, `busybox reboot`, which sends the same
 * SIGTERM): one exec fewer, seconds on these hosts, within a pod's 30 s grace period.
 * Started in the background by /etc/kiln/rcS. Static C, no libraries: exec is costly on hosts
 * that emulate guest ring-0 code.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <unistd.h>

/* The kernel's input ABI (linux/input.h; musl ships no kernel headers). */
struct input_event {
	struct timeval time;
	uint16_t type, code;
	int32_t value;
};
#define EV_KEY 1
#define KEY_LEFTCTRL 29
#define KEY_LEFTALT 56
#define KEY_RIGHTCTRL 97
#define KEY_RIGHTALT 100
#define KEY_DELETE 111
#define KEY_MAX 0x2ff
#define EVIOCGBIT(ev, len) _IOC(_IOC_READ, 'E', 0x20 + (ev), (len))

/* The first event device that has a Delete key, opened for blocking reads; -1 if none. */
static int open_keyboard(void) {
	char path[32];
	for (int i = 0; i < 8; i++) {
		unsigned long keys[KEY_MAX / (8 * sizeof(long)) + 1] = {0};
		snprintf(path, sizeof(path), "/dev/input/event%d", i);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		int bits = 8 * sizeof(long);
		if (ioctl(fd, EVIOCGBIT(EV_KEY, sizeof(keys)), keys) >= 0 &&
		    (keys[KEY_DELETE / bits] >> (KEY_DELETE % bits)) & 1)
			return fd;
		close(fd);
	}
	return -1;
}

int main(void) {
	int fd = open_keyboard();
	if (fd < 0) {
		fputs("kiln-ctrl-alt-del: no keyboard event device; Ctrl-Alt-Del will not stop this guest\n", stderr);
		return 1;
	}
	int ctrl = 0, alt = 0;
	struct input_event ev[16];
	ssize_t n;
	while ((n = read(fd, ev, sizeof(ev))) > 0) {
		for (size_t i = 0; i < (size_t)n / sizeof(ev[0]); i++) {
			if (ev[i].type != EV_KEY)
				continue;
			int down = ev[i].value != 0;
			switch (ev[i].code) {
			case KEY_LEFTCTRL:
			case KEY_RIGHTCTRL:
				ctrl = down;
				break;
			case KEY_LEFTALT:
			case KEY_RIGHTALT:
				alt = down;
				break;
			case KEY_DELETE:
				if (ev[i].value == 1 && ctrl && alt) {
					fputs("kiln-ctrl-alt-del: Ctrl-Alt-Del: shutting down\n", stderr);
					kill(1, SIGTERM);
				}
				break;
			}
		}
	}
	perror("kiln-ctrl-alt-del: reading the keyboard");
	return 1;
}
