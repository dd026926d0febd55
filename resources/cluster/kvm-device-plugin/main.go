// kiln-kvm-device-plugin: offers /dev/kvm and /dev/net/tun to pods as the extended resources
// devices.kiln.dev/kvm and devices.kiln.dev/tun through the kubelet's device-plugin API (as
// KubeVirt's devices.kubevirt.io/kvm and /tun), so launcher pods request KVM and TAP devices
// instead of running privileged. Both can be shared, so each resource advertises a fixed number
// of identical devices; each allocation mounts the device node read-write.
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

// resource is one device node offered as an extended resource.
type resource struct {
	name   string // the extended resource
	socket string // in the kubelet's device-plugin folder
	path   string // the device node, the same inside the container
	prefix string // of the device IDs
}

var resources = []resource{
	{"devices.kiln.dev/kvm", "kiln-kvm.sock", "/dev/kvm", "kvm"},
	{"devices.kiln.dev/tun", "kiln-tun.sock", "/dev/net/tun", "tun"},
}

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	res   resource
	count int
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *plugin) devices() []*pluginapi.Device {
	health := pluginapi.Healthy
	if _, err := os.Stat(p.res.path); err != nil {
		health = pluginapi.Unhealthy
	}
	devs := make([]*pluginapi.Device, p.count)
	for i := range devs {
		devs[i] = &pluginapi.Device{ID: fmt.Sprintf("%s-%d", p.res.prefix, i), Health: health}
	}
	return devs
}

// ListAndWatch sends the device list, then again whenever the device node appears or disappears.
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
			Devices: []*pluginapi.DeviceSpec{{ContainerPath: p.res.path, HostPath: p.res.path, Permissions: "rw"}},
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

func register(dir string, res resource) error {
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: res.socket, ResourceName: res.name,
	})
	return err
}

func socketExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func main() {
	dir := flag.String("dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin folder")
	count := flag.Int("count", 110, "how many pods may hold each device at once")
	flag.Parse()
	for _, res := range resources[1:] {
		go serve(*dir, res, *count)
	}
	serve(*dir, resources[0], *count)
}

// serve offers one resource for ever: listens on its socket and registers it with the kubelet,
// again whenever the kubelet restarts.
func serve(dir string, res resource, count int) {
	sock := filepath.Join(dir, res.socket)
	for {
		// The kubelet removes plugin sockets when it restarts: serve and register anew then.
		_ = os.Remove(sock)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			log.Fatalf("creating %s: %v", dir, err)
		}
		lis, err := net.Listen("unix", sock)
		if err != nil {
			log.Printf("listening on %s: %v (retrying)", sock, err)
			time.Sleep(time.Second)
			continue
		}
		srv := grpc.NewServer()
		pluginapi.RegisterDevicePluginServer(srv, &plugin{res: res, count: count})
		go func() { _ = srv.Serve(lis) }()
		// A kubelet that is starting clears the folder, our socket included: then listen anew.
		registered := false
		for socketExists(sock) {
			if err := register(dir, res); err != nil {
				log.Printf("registering %s with the kubelet: %v (retrying)", res.name, err)
				time.Sleep(time.Second)
				continue
			}
			registered = true
			log.Printf("registered %s (%d devices) at %s", res.name, count, sock)
			break
		}
		for registered && socketExists(sock) {
			time.Sleep(time.Second)
		}
		srv.Stop()
	}
}
