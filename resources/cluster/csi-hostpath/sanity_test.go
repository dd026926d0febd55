// The driver against kubernetes-csi's csi-sanity suite (the CSI spec's conformance tests),
// served in-process on a temporary socket; the Node tests bind-mount, so they need root.
package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"google.golang.org/grpc"
)

func TestSanity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the CSI sanity suite bind-mounts volumes: run it as root")
	}
	tmp := t.TempDir()
	d := &driver{dir: filepath.Join(tmp, "volumes"), node: "sanity-node", busy: map[string]bool{}}
	if err := os.MkdirAll(d.dir, 0o750); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(tmp, "csi.sock")
	server := grpc.NewServer()
	csi.RegisterIdentityServer(server, d)
	csi.RegisterControllerServer(server, d)
	csi.RegisterNodeServer(server, d)
	go func() { _ = server.Serve(listen(socket)) }()
	defer server.Stop()

	config := sanity.NewTestConfig()
	config.Address = "unix://" + socket
	config.TargetPath = filepath.Join(tmp, "target")
	config.StagingPath = filepath.Join(tmp, "staging")
	config.TestVolumeSize = 16 << 20
	sanity.Test(t, config)
}
