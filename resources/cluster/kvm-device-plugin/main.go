// kiln-kvm-device-plugin: offers /dev/kvm to pods as the extended resource devices.kiln.dev/kvm
// through the kubelet's device-plugin API (as KubeVirt's devices.kubevirt.io/kvm), so launcher
// pods request KVM instead of running privileged. /dev/kvm can be shared, so the plugin
// advertises a fixed number of identical devices; each allocation mounts /dev/kvm read-write.
//
//	kiln-kvm-device-plugin [-dir /var/lib/kubelet/device-plugins] [-count 110]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

const (
	resourceName = "devices.kiln.dev/kvm"
	socketName   = "kiln-kvm.sock"
	kvmPath      = "/dev/kvm"
)

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	count int
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *plugin) devices() []*pluginapi.Device {
	health := pluginapi.Healthy
	if _, err := os.Stat(kvmPath); err != nil {
		health = pluginapi.Unhealthy
	}
	devs := make([]*pluginapi.Device, p.count)
	for i := range devs {
		devs[i] = &pluginapi.Device{ID: fmt.Sprintf("kvm-%d", i), Health: health}
	}
	return devs
}

// ListAndWatch sends the device list, then again whenever /dev/kvm appears or disappears.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	last := ""
	for {
		devs := p.devices()
		if devs[0].Health != last {
			if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
				return err
			}
			last = devs[0].Health
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-time.After(10 * time.Second):
		}
	}
}

func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for range req.ContainerRequests {
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Devices: []*pluginapi.DeviceSpec{{ContainerPath: kvmPath, HostPath: kvmPath, Permissions: "rw"}},
		})
	}
	return resp, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

func register(dir string) error {
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: socketName, ResourceName: resourceName,
	})
	return err
}

func socketExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func main() {
	dir := flag.String("dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin folder")
	count := flag.Int("count", 110, "how many pods may hold /dev/kvm at once")
	flag.Parse()
	sock := filepath.Join(*dir, socketName)
	for {
		// The kubelet removes plugin sockets when it restarts: serve and register anew then.
		_ = os.Remove(sock)
		if err := os.MkdirAll(*dir, 0o750); err != nil {
			log.Fatalf("creating %s: %v", *dir, err)
		}
		lis, err := net.Listen("unix", sock)
		if err != nil {
			log.Printf("listening on %s: %v (retrying)", sock, err)
			time.Sleep(time.Second)
			continue
		}
		srv := grpc.NewServer()
		pluginapi.RegisterDevicePluginServer(srv, &plugin{count: *count})
		go func() { _ = srv.Serve(lis) }()
		// A kubelet that is starting clears the folder, our socket included: then listen anew.
		registered := false
		for socketExists(sock) {
			if err := register(*dir); err != nil {
				log.Printf("registering with the kubelet: %v (retrying)", err)
				time.Sleep(time.Second)
				continue
			}
			registered = true
			log.Printf("registered %s (%d devices) at %s", resourceName, *count, sock)
			break
		}
		for registered && socketExists(sock) {
			time.Sleep(time.Second)
		}
		srv.Stop()
	}
}
