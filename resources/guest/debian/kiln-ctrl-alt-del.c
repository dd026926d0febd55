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
#include <signal.h>
#include <stdio.h>

#include "../init/kiln-keyboard.h"

int main(void) {
	int fd = open_keyboard(O_RDONLY);
	if (fd < 0) {
		fputs("kiln-ctrl-alt-del: no keyboard event device; Ctrl-Alt-Del will not stop this guest\n", stderr);
		return 1;
	}
	struct keyboard_state keys = {0};
	struct input_event ev[16];
	ssize_t n;
	while ((n = read(fd, ev, sizeof(ev))) > 0) {
		if (ctrl_alt_del_in(&keys, ev, (size_t)n / sizeof(ev[0]))) {
			fputs("kiln-ctrl-alt-del: Ctrl-Alt-Del: shutting down\n", stderr);
			kill(1, SIGTERM);
		}
	}
	perror("kiln-ctrl-alt-del: reading the keyboard");
	return 1;
}
