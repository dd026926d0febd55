// kiln-csi-hostpath: a CSI driver (hostpath.csi.kiln.dev) for Kiln's single-node development
// cluster, in the manner of kubernetes-csi/csi-driver-host-path (whose module the Go proxy here
// does not serve): volumes are folders (Filesystem) or sparse image files on loop devices
// (Block) under one host folder, and a volume created from another is a sparse (reflinked where
// the filesystem can) copy of it, so claims with a PersistentVolumeClaim dataSource are CSI
// clones. It runs on the node as a host process serving the CSI Identity, Controller and Node
// services on one socket, and registers itself with the kubelet through the plugin-registration
// API (the node-driver-registrar's part); the official external-provisioner sidecar drives its
// Controller service from inside the cluster.
//
//	kiln-csi-hostpath -endpoint SOCK -registration-dir DIR -dir VOLUMES -node NODE
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// driverName is the CSI driver's name, the StorageClass provisioner and the CSIDriver object.
const driverName = "hostpath.csi.kiln.dev"

const vendorVersion = "0.1.0"

func main() {
	endpoint := flag.String("endpoint", "", "the CSI socket to serve (the kubelet and the provisioner connect to it)")
	regDir := flag.String("registration-dir", "", "the kubelet's plugins_registry folder")
	dir := flag.String("dir", "", "the folder holding the volumes")
	node := flag.String("node", "", "this node's name (the CSI node ID)")
	flag.Parse()
	if *endpoint == "" || *regDir == "" || *dir == "" || *node == "" {
		log.Fatal("kiln-csi-hostpath: -endpoint, -registration-dir, -dir and -node are all required")
	}
	if err := os.MkdirAll(*dir, 0o750); err != nil {
		log.Fatalf("kiln-csi-hostpath: %v", err)
	}
	d := &driver{dir: *dir, node: *node, busy: map[string]bool{}}

	csiServer := grpc.NewServer(grpc.UnaryInterceptor(logged))
	csi.RegisterIdentityServer(csiServer, d)
	csi.RegisterControllerServer(csiServer, d)
	csi.RegisterNodeServer(csiServer, d)
	csiListener := listen(*endpoint)

	regServer := grpc.NewServer()
	regapi.RegisterRegistrationServer(regServer, &registrar{endpoint: *endpoint})
	regSocket := filepath.Join(*regDir, driverName+"-reg.sock")
	regListener := listen(regSocket)

	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGTERM, syscall.SIGINT)
	go func() { log.Printf("csi: %v", csiServer.Serve(csiListener)) }()
	go func() { log.Printf("registration: %v", regServer.Serve(regListener)) }()
	log.Printf("kiln-csi-hostpath %s: serving %s on %s (volumes in %s), registering through %s",
		vendorVersion, driverName, *endpoint, *dir, regSocket)
	<-done
	regServer.Stop()
	csiServer.GracefulStop()
	_ = os.Remove(regSocket)
	_ = os.Remove(*endpoint)
}

// listen makes a fresh Unix socket at path (its folder too).
func listen(path string) net.Listener {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		log.Fatalf("kiln-csi-hostpath: %v", err)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		log.Fatalf("kiln-csi-hostpath: %v", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		log.Fatalf("kiln-csi-hostpath: %v", err)
	}
	return l
}

// logged logs every CSI call that changes something, and every failure.
func logged(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	switch {
	case err != nil:
		log.Printf("%s: %v", info.FullMethod, err)
	case !quiet[filepath.Base(info.FullMethod)]:
		log.Printf("%s: ok", info.FullMethod)
	}
	return resp, err
}

// quiet are the calls made often that change nothing.
var quiet = map[string]bool{
	"Probe": true, "GetPluginInfo": true, "GetPluginCapabilities": true,
	"ControllerGetCapabilities": true, "NodeGetCapabilities": true, "NodeGetInfo": true,
}

// registrar answers the kubelet's plugin watcher, which found the registration socket.
type registrar struct {
	regapi.UnimplementedRegistrationServer
	endpoint string
}

func (r *registrar) GetInfo(context.Context, *regapi.InfoRequest) (*regapi.PluginInfo, error) {
	return &regapi.PluginInfo{
		Type:              regapi.CSIPlugin,
		Name:              driverName,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *regapi.RegistrationStatus) (*regapi.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		log.Printf("registration: the kubelet registered %s", driverName)
	} else {
		log.Printf("registration: the kubelet refused %s: %s", driverName, s.Error)
	}
	return &regapi.RegistrationStatusResponse{}, nil
}
