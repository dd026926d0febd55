// etcd for Kiln's development cluster: the official etcd server (go.etcd.io/etcd/server/v3),
// started exactly as etcd's own main does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
