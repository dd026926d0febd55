// The CSI Node service: a Filesystem volume is bind-mounted at the kubelet's target folder, a
// Block volume's image is attached to a loop device bind-mounted at the kubelet's target file.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.node}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if !validID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "volume ID %q is not one this driver makes", id)
	}
	if target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "target path %q must be absolute", target)
	}
	block, err := wantsBlock([]*csi.VolumeCapability{req.GetVolumeCapability()})
	if err != nil {
		return nil, err
	}
	v, err := d.lookup(id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist", id)
	}
	if v.Block != block {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s has another volume mode", id)
	}
	if mounted, err := isMountPoint(target); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	} else if mounted {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	source := d.data(id)
	if block {
		if source, err = attachLoop(d.image(id)); err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
		if err := makeFile(target); err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind-mounting %s at %s: %v", source, target, err)
	}
	if req.GetReadonly() {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return nil, status.Errorf(codes.Internal, "making %s read-only: %v", target, err)
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if !validID.MatchString(id) || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "volume %q at %q", id, target)
	}
	mounted, err := isMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if mounted {
		if err := unix.Unmount(target, 0); err != nil {
			return nil, status.Errorf(codes.Internal, "unmounting %s: %v", target, err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if v, _ := d.lookup(id); v != nil && v.Block {
		if err := detachLoops(d.image(id), target); err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// makeFile creates an empty file at path (and its folder) to bind a device onto.
func makeFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// loopsOf lists the loop devices backed by image.
func loopsOf(image string) ([]string, error) {
	out, err := exec.Command("losetup", "-n", "-O", "NAME", "-j", image).Output()
	if err != nil {
		return nil, fmt.Errorf("losetup -j %s: %v", image, err)
	}
	return strings.Fields(string(out)), nil
}

// attachLoop returns the loop device backed by image, attaching one if there is none.
func attachLoop(image string) (string, error) {
	loops, err := loopsOf(image)
	if err != nil {
		return "", err
	}
	if len(loops) > 0 {
		return loops[0], nil
	}
	out, err := exec.Command("losetup", "-f", "--show", image).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup -f %s: %v: %s", image, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// detachLoops detaches image's loop devices once no mount other than except uses them; one
// still bound elsewhere is an error.
func detachLoops(image, except string) error {
	loops, err := loopsOf(image)
	if err != nil {
		return err
	}
	for _, loop := range loops {
		users, err := mountsOf(loop)
		if err != nil {
			return err
		}
		for _, u := range users {
			if u != except {
				return fmt.Errorf("%s is still mounted at %s", loop, u)
			}
		}
		if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
			return fmt.Errorf("losetup -d %s: %v: %s", loop, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// mountInfo yields the root and mount point of every mount in this mount namespace.
func mountInfo(each func(root, point string)) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 {
			each(unescape(fields[3]), unescape(fields[4]))
		}
	}
	return s.Err()
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and backslash.
func unescape(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

func isMountPoint(path string) (bool, error) {
	found := false
	err := mountInfo(func(_, point string) { found = found || point == path })
	return found, err
}

// mountsOf lists where device node dev (a /dev entry) is bind-mounted: devtmpfs bind mounts
// show the node's name as their root.
func mountsOf(dev string) ([]string, error) {
	var at []string
	root := "/" + strings.TrimPrefix(dev, "/dev/")
	err := mountInfo(func(r, point string) {
		if r == root {
			at = append(at, point)
		}
	})
	return at, err
}
