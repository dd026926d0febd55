// Drives kiln-vmm with the Firecracker Go SDK, unchanged: kiln-vmm stands in for the firecracker
// binary. Configures and starts a VM (machine, boot source, root drive), waits for the guest's
// marker on the console, pauses, resumes, and shuts the guest down with Ctrl-Alt-Del.
//
//	firecracker-sdk KILN_VMM KERNEL ROOTFS SOCKET MARKER
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	models "github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/sirupsen/logrus"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "SDK_FAIL "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 6 {
		fail("usage: firecracker-sdk KILN_VMM KERNEL ROOTFS SOCKET MARKER")
	}
	vmm, kernel, rootfs, sock, marker := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	console, consoleW := io.Pipe()
	seen := make(chan struct{})
	go func() {
		scanner := bufio.NewScanner(console)
		found := false
		for scanner.Scan() {
			line := scanner.Text()
			fmt.Println("guest|", line)
			if !found && strings.Contains(line, marker) {
				found = true
				close(seen)
			}
		}
	}()

	cfg := firecracker.Config{
		SocketPath:      sock,
		KernelImagePath: kernel,
		KernelArgs:      "console=ttyS0 quiet kiln.action=run:/kiln-test.sh",
		Drives:          firecracker.NewDrivesBuilder(rootfs).Build(),
		MachineCfg: models.MachineConfiguration{
			VcpuCount:  firecracker.Int64(1),
			MemSizeMib: firecracker.Int64(256),
			Smt:        firecracker.Bool(false),
		},
	}
	cmd := firecracker.VMCommandBuilder{}.
		WithBin(vmm).
		WithSocketPath(sock).
		WithStdout(consoleW).
		WithStderr(os.Stderr).
		Build(ctx)
	logger := logrus.New()
	m, err := firecracker.NewMachine(ctx, cfg, firecracker.WithProcessRunner(cmd),
		firecracker.WithLogger(logrus.NewEntry(logger)))
	if err != nil {
		fail("NewMachine: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		fail("Start: %v", err)
	}
	fmt.Println("SDK_STARTED")
	select {
	case <-seen:
	case <-time.After(6 * time.Minute):
		fail("no %q on the console", marker)
	}
	if err := m.PauseVM(ctx); err != nil {
		fail("PauseVM: %v", err)
	}
	time.Sleep(time.Second)
	if err := m.ResumeVM(ctx); err != nil {
		fail("ResumeVM: %v", err)
	}
	cfgOut, err := m.GetFirecrackerVersion(ctx)
	if err != nil {
		fail("GetFirecrackerVersion: %v", err)
	}
	fmt.Println("SDK_VERSION", cfgOut)
	if err := m.Shutdown(ctx); err != nil {
		fail("Shutdown (SendCtrlAltDel): %v", err)
	}
	if err := m.Wait(ctx); err != nil {
		fail("Wait: %v", err)
	}
	fmt.Println("SDK_OK")
}
