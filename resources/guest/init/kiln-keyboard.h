/*
 * Ctrl-Alt-Del from the keyboard's event device, for guests whose kernel has no VT (Kiln's):
 * such a kernel never turns the keys into init's SIGINT. Shared by kiln-init and the Debian
 * image's kiln-ctrl-alt-del. Header-only: each is one static C file.
 */
#ifndef KILN_KEYBOARD_H
#define KILN_KEYBOARD_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
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

/* The first event device that has a Delete key, opened with open(2) flags `flags`; -1 if none. */
static int open_keyboard(int flags) {
	char path[32];
	for (int i = 0; i < 8; i++) {
		unsigned long keys[KEY_MAX / (8 * sizeof(long)) + 1] = {0};
		snprintf(path, sizeof(path), "/dev/input/event%d", i);
		int fd = open(path, flags | O_CLOEXEC);
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

/* The modifier keys held, across reads. */
struct keyboard_state {
	int ctrl, alt;
};

/* Follows `n` events; true if Delete went down while Ctrl and Alt were held. */
static int ctrl_alt_del_in(struct keyboard_state *k, const struct input_event *ev, size_t n) {
	int typed = 0;
	for (size_t i = 0; i < n; i++) {
		if (ev[i].type != EV_KEY)
			continue;
		int down = ev[i].value != 0;
		switch (ev[i].code) {
		case KEY_LEFTCTRL:
		case KEY_RIGHTCTRL:
			k->ctrl = down;
			break;
		case KEY_LEFTALT:
		case KEY_RIGHTALT:
			k->alt = down;
			break;
		case KEY_DELETE:
			if (ev[i].value == 1 && k->ctrl && k->alt)
				typed = 1;
			break;
		}
	}
	return typed;
}

#endif
