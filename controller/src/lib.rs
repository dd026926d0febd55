//! kube-rs controller turning VirtualMachine resources into launcher pods: arrives with later issues.
