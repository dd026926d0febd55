// Clones of both volume modes: the copy holds the source's bytes, keeps its holes, and a
// block clone is published as a loop device that reads them back.
package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func capability(block bool) []*csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{
		Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
	}}
	if block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}
	}
	return []*csi.VolumeCapability{c}
}

func create(t *testing.T, d *driver, name, source string, block bool, size int64) error {
	t.Helper()
	req := &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: capability(block),
		CapacityRange: &csi.CapacityRange{RequiredBytes: size},
	}
	if source != "" {
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: source},
		}}
	}
	_, err := d.CreateVolume(context.Background(), req)
	return err
}

// allocated is how many bytes of path's blocks the filesystem holds.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestClones(t *testing.T) {
	d := &driver{dir: t.TempDir(), node: "n", busy: map[string]bool{}}
	payload := bytes.Repeat([]byte("kiln"), 256) // 1 KiB at 8 MiB, the rest holes

	if err := create(t, d, "fs-src", "", false, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(d.data("fs-src"), "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(payload, 8<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := create(t, d, "fs-clone", "fs-src", false, 0); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(d.data("fs-clone"), "disk.img"))
	if err != nil || len(got) != 8<<20+len(payload) || !bytes.Equal(got[8<<20:], payload) {
		t.Fatalf("the filesystem clone's disk.img differs (%d bytes, %v)", len(got), err)
	}
	if a := allocated(t, filepath.Join(d.data("fs-clone"), "disk.img")); a > 1<<20 {
		t.Fatalf("the clone holds %d bytes: its holes were filled", a)
	}

	if err := create(t, d, "blk-src", "", true, 16<<20); err != nil {
		t.Fatal(err)
	}
	f, err = os.OpenFile(d.image("blk-src"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(payload, 8<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	err = create(t, d, "blk-small", "blk-src", true, 8<<20)
	if status.Code(err) != codes.OutOfRange {
		t.Fatalf("a clone smaller than its source: %v, want OutOfRange", err)
	}
	if err := create(t, d, "blk-clone", "blk-src", true, 32<<20); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(d.image("blk-clone")); err != nil || fi.Size() != 32<<20 {
		t.Fatalf("the block clone is not grown to the 32 MiB asked for: %v %v", fi, err)
	}
	if err := create(t, d, "blk-wrong", "fs-src", true, 32<<20); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a block clone of a filesystem volume: %v, want InvalidArgument", err)
	}
	if _, err := os.Stat(filepath.Join(d.dir, ".new-blk-wrong")); !os.IsNotExist(err) {
		t.Fatalf("a refused clone left its temporary folder: %v", err)
	}

	if os.Geteuid() != 0 {
		t.Fatal("publishing a block volume attaches a loop device: run as root")
	}
	target := filepath.Join(t.TempDir(), "dev")
	pub := &csi.NodePublishVolumeRequest{VolumeId: "blk-clone", TargetPath: target, VolumeCapability: capability(true)[0]}
	if _, err := d.NodePublishVolume(context.Background(), pub); err != nil {
		t.Fatal(err)
	}
	dev, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	read := make([]byte, len(payload))
	_, err = dev.ReadAt(read, 8<<20)
	dev.Close()
	if err != nil || !bytes.Equal(read, payload) {
		t.Fatalf("the published block clone reads back other bytes (%v)", err)
	}
	if _, err := d.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: "blk-clone"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("deleting a published block volume: %v, want FailedPrecondition", err)
	}
	unpub := &csi.NodeUnpublishVolumeRequest{VolumeId: "blk-clone", TargetPath: target}
	if _, err := d.NodeUnpublishVolume(context.Background(), unpub); err != nil {
		t.Fatal(err)
	}
	if loops, err := loopsOf(d.image("blk-clone")); err != nil || len(loops) != 0 {
		t.Fatalf("loop devices left after unpublishing: %v %v", loops, err)
	}
	if _, err := d.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: "blk-clone"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.folder("blk-clone")); !os.IsNotExist(err) {
		t.Fatalf("the deleted volume's folder is still there: %v", err)
	}
}
