// The CSI Identity and Controller services: volumes as folders or sparse image files under the
// driver's folder, created empty or as a copy of another volume (a CSI clone), and deleted.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// defaultBlockSize is a block volume's size when the claim gives none.
const defaultBlockSize = 1 << 30

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	dir, node string

	mu   sync.Mutex
	busy map[string]bool // volumes being created or deleted
}

// validID: the provisioner's volume names (pvc-<uid>), never a path.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// A volume is the folder dir/ID holding volume.json (what it was created as) and its data: the
// folder data/ (Filesystem) or the sparse file disk.img (Block).
type volume struct {
	Block    bool   `json:"block"`
	Capacity int64  `json:"capacityBytes"`
	Source   string `json:"sourceVolume,omitempty"`
}

func (d *driver) folder(id string) string { return filepath.Join(d.dir, id) }
func (d *driver) data(id string) string   { return filepath.Join(d.dir, id, "data") }
func (d *driver) image(id string) string  { return filepath.Join(d.dir, id, "disk.img") }

// lookup reads volume id's description; nil if there is no such volume.
func (d *driver) lookup(id string) (*volume, error) {
	if !validID.MatchString(id) {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(d.folder(id), "volume.json"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "volume %s: %v", id, err)
	}
	v := &volume{}
	if err := json.Unmarshal(b, v); err != nil {
		return nil, status.Errorf(codes.Internal, "volume %s: volume.json: %v", id, err)
	}
	return v, nil
}

// claim marks volume id busy; a second operation on it meanwhile is refused with Aborted, as
// the CSI spec asks, and the provisioner retries it.
func (d *driver) claim(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy[id] {
		return status.Errorf(codes.Aborted, "an operation on volume %s is in progress", id)
	}
	d.busy[id] = true
	return nil
}

func (d *driver) release(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.busy, id)
}

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: driverName, VendorVersion: vendorVersion}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE,
		}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}},
		})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// wantsBlock says whether the capabilities ask for a block volume (all of them, or none).
func wantsBlock(caps []*csi.VolumeCapability) (bool, error) {
	if len(caps) == 0 {
		return false, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	blocks := 0
	for _, c := range caps {
		if c.GetBlock() != nil {
			blocks++
		} else if c.GetMount() == nil {
			return false, status.Error(codes.InvalidArgument, "a capability must be block or mount")
		}
		switch c.GetAccessMode().GetMode() {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		default:
			return false, status.Errorf(codes.InvalidArgument,
				"access mode %v: a host-path volume lives on one node", c.GetAccessMode().GetMode())
		}
	}
	if blocks != 0 && blocks != len(caps) {
		return false, status.Error(codes.InvalidArgument, "block and mount capabilities together")
	}
	return blocks != 0, nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	id := req.GetName()
	if !validID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "volume name %q: letters, digits, '.', '_' and '-' only", id)
	}
	block, err := wantsBlock(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	size := req.GetCapacityRange().GetRequiredBytes()
	if size == 0 && block {
		size = defaultBlockSize
	}
	if limit := req.GetCapacityRange().GetLimitBytes(); limit != 0 && size > limit {
		return nil, status.Errorf(codes.OutOfRange, "required %d bytes exceeds the limit %d", size, limit)
	}
	source := ""
	if cs := req.GetVolumeContentSource(); cs != nil {
		if cs.GetSnapshot() != nil {
			return nil, status.Error(codes.InvalidArgument, "snapshots are not supported: clone the claim instead")
		}
		source = cs.GetVolume().GetVolumeId()
		if !validID.MatchString(source) {
			return nil, status.Errorf(codes.InvalidArgument, "source volume %q is not a volume ID", source)
		}
	}
	if err := d.claim(id); err != nil {
		return nil, err
	}
	defer d.release(id)
	resp := &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId: id, CapacityBytes: size, ContentSource: req.GetVolumeContentSource(),
	}}
	want := volume{Block: block, Capacity: size, Source: source}
	old, err := d.lookup(id)
	if err != nil {
		return nil, err
	}
	if old != nil {
		if *old != want {
			return nil, status.Errorf(codes.AlreadyExists,
				"volume %s exists as %+v, not %+v", id, *old, want)
		}
		return resp, nil
	}
	if source != "" {
		src, err := d.lookup(source)
		if err != nil {
			return nil, err
		}
		if src == nil {
			return nil, status.Errorf(codes.NotFound, "source volume %s does not exist", source)
		}
		if src.Block != block {
			return nil, status.Errorf(codes.InvalidArgument, "source volume %s has another volume mode", source)
		}
		if src.Capacity > size && size != 0 {
			return nil, status.Errorf(codes.OutOfRange,
				"source volume %s holds %d bytes, more than the %d asked for", source, src.Capacity, size)
		}
	}
	if err := d.build(id, want); err != nil {
		return nil, err
	}
	return resp, nil
}

// build makes volume id (a copy of v.Source if given) under a temporary name, then renames it,
// so a volume that exists is always complete.
func (d *driver) build(id string, v volume) error {
	tmp := filepath.Join(d.dir, ".new-"+id)
	if err := os.RemoveAll(tmp); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	err := os.Mkdir(tmp, 0o750)
	switch {
	case err != nil:
	case v.Block && v.Source != "":
		if err = sparseCopy(d.image(v.Source), filepath.Join(tmp, "disk.img")); err == nil {
			err = growTo(filepath.Join(tmp, "disk.img"), v.Capacity)
		}
	case v.Block:
		err = growTo(filepath.Join(tmp, "disk.img"), v.Capacity)
	case v.Source != "":
		err = sparseCopy(d.data(v.Source), filepath.Join(tmp, "data"))
	default:
		// 0777 as the upstream driver leaves it: pods of any user write to their volume.
		if err = os.Mkdir(filepath.Join(tmp, "data"), 0o777); err == nil {
			err = os.Chmod(filepath.Join(tmp, "data"), 0o777)
		}
	}
	if err == nil && v.Source != "" {
		// A clone is on disk before it is reported made, as an importer's disk is.
		err = syncTree(tmp)
	}
	if err == nil {
		var b []byte
		if b, err = json.Marshal(v); err == nil {
			err = os.WriteFile(filepath.Join(tmp, "volume.json"), b, 0o640)
		}
	}
	if err == nil {
		err = os.Rename(tmp, d.folder(id))
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			return err
		}
		return status.Errorf(codes.Internal, "creating volume %s: %v", id, err)
	}
	return nil
}

// sparseCopy copies file or folder src to dst (which must not exist) with GNU cp: holes stay
// holes, and blocks are shared where the filesystem supports reflinks.
func sparseCopy(src, dst string) error {
	out, err := exec.Command("cp", "-a", "--sparse=always", "--reflink=auto", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp %s: %v: %s", src, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// syncTree fsyncs every file and folder under root.
func syncTree(root string) error {
	return filepath.WalkDir(root, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() && !e.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
}

// growTo makes file path at least size bytes long (creating it sparse if missing); a source
// larger than the volume asked for is refused.
func growTo(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > size {
		return status.Errorf(codes.OutOfRange, "the source holds %d bytes, more than the %d asked for", fi.Size(), size)
	}
	return f.Truncate(size)
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if !validID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "volume ID %q is not one this driver makes", id)
	}
	if err := d.claim(id); err != nil {
		return nil, err
	}
	defer d.release(id)
	v, err := d.lookup(id)
	if err != nil {
		return nil, err
	}
	if v != nil && v.Block {
		if err := detachLoops(d.image(id), ""); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still in use: %v", id, err)
		}
	}
	// volume.json goes first: a volume half removed is no volume.
	_ = os.Remove(filepath.Join(d.folder(id), "volume.json"))
	if err := os.RemoveAll(d.folder(id)); err != nil {
		return nil, status.Errorf(codes.Internal, "deleting volume %s: %v", id, err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "a volume ID is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	v, err := d.lookup(id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q does not exist", id)
	}
	wanted, err := wantsBlock(req.GetVolumeCapabilities())
	if err != nil || wanted != v.Block {
		msg := "another volume mode"
		if err != nil {
			msg = err.Error()
		}
		return &csi.ValidateVolumeCapabilitiesResponse{Message: msg}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeCapabilities: req.GetVolumeCapabilities(),
	}}, nil
}
